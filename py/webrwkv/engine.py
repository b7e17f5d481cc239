"""Engine entry point: load a model onto the GPU (or the numpy reference) with its tokenizer."""

from __future__ import annotations

import importlib
from typing import Any, Sequence

from .errors import TokenizerError, WebRwkvError
from .formats import weight_format
from .models import ModelInfo, default_model_path, load_index, load_weights
from .runtime import DEFAULT_CHUNK, check_limits


class Engine:
    """A loaded model: `.runtime` (Runtime or ReferenceRuntime), `.tokenizer`, `.info`, `.device`.

    The tokenizer loads on first use; a tokenizer with more ids than the model's vocabulary
    raises TokenizerError there (the runtime stays usable with raw token ids).
    """

    def __init__(self, runtime: Any, info: ModelInfo, model_path: Any, backend: str, device: Any = None) -> None:
        self.runtime, self.info, self.model_path, self.backend, self.device = runtime, info, model_path, backend, device
        self._tokenizer = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from .tokenizer import load_tokenizer_for_model

            path = self.model_path if isinstance(self.model_path, (str, bytes)) or hasattr(self.model_path, "__fspath__") else None
            tok = load_tokenizer_for_model(path)
            if tok.vocab_size > self.info.vocab:
                raise TokenizerError(
                    f"the tokenizer has {tok.vocab_size} ids but the model's vocabulary is {self.info.vocab}; "
                    "put the model's own vocabulary next to it as <model>.vocab.txt or pass --vocab")
            self._tokenizer = tok
        return self._tokenizer

    def load_state(self, state: Any, slot: int | None = None) -> None:
        """Start `slot` (every slot when None) from a state file (path, URL or byte source of a safetensors or
        .pth file with blocks.N.att.time_state); reset() returns there. None: back to the model's own state.
        A state made for another model raises ModelFormatError and changes nothing."""
        from .models.states import read_state

        self.runtime.set_initial_state(None if state is None else read_state(state, self.info), slot)

    @property
    def vocab_mismatch(self) -> str:
        """'' when tokenizer and model agree, else a one-line description."""
        try:
            tok = self.tokenizer
        except TokenizerError as e:
            return str(e)
        if tok.vocab_size < self.info.vocab:
            return f"tokenizer uses {tok.vocab_size} of the model's {self.info.vocab} ids"
        return ""


def _apply_optional(module: str, func: str, what: str, *args: Any) -> Any:
    try:
        mod = importlib.import_module(f"webrwkv.{module}")
    except ImportError:
        raise WebRwkvError(f"{what} is not available in this build of webrwkv; run without it") from None
    return getattr(mod, func)(*args)


def load_engine(model: Any = None, backend: str = "native", max_batch: int = 1, token_chunk_size: int = DEFAULT_CHUNK,
                adapter: Any = None, quant: str = "none", lora: Sequence[str] = (), *, state: Any = None,
                device: Any = None, **device_options: Any) -> Engine:
    """Load `model` (path/URL/byte source; None = the bundled model) for `backend` ("native" | "reference").

    `adapter` picks a GPU (name substring or index); `device` passes an already open webrwkv.gpu
    Device; `device_options` go to the native device (e.g. max_binding_override). `state` is a state file
    every slot starts from (Engine.load_state); a state-tuned checkpoint's own state is used without it.
    """
    if backend not in ("native", "reference"):
        raise WebRwkvError(f"unknown backend {backend!r}; use 'native' or 'reference'")
    weight_format(quant)  # an unknown name fails here, before anything is read
    path = model if model is not None else default_model_path()
    dev = None
    if backend == "native":  # the adapter's limits are checked from the header, before any tensor is read
        from .gpu import open_device

        dev = device if device is not None else open_device("native", adapter, **device_options)
        check_limits(dev, load_index(path)[0], max_batch, token_chunk_size)
    info, weights = _read_weights(path, keep_fp16=backend == "native")  # the GPU packs fp16 anyway
    tuned = None
    if state is not None:  # read (and checked against the model) before any GPU memory is taken
        from .models.states import read_state

        tuned = read_state(state, info)
    for spec in lora:
        weights = _apply_optional("lora", "merge_lora", "LoRA merging", info, weights, spec)
    if backend == "reference":
        if quant != "none":
            raise WebRwkvError("quantization applies to the GPU backend only; drop --quant or use --backend native")
        from .reference import ReferenceRuntime

        eng = Engine(ReferenceRuntime((info, weights), max_batch, token_chunk_size), info, path, backend)
    else:
        from . import progress
        from .layers import default_upload
        from .runtime import Runtime

        total = sum(2 * a.size for a in weights.values() if getattr(a, "ndim", 0) == 2)
        with progress.bar(total, "uploading to the GPU") as bar:
            rt = Runtime(dev, info, weights, max_batch=max_batch, token_chunk_size=token_chunk_size, quant=quant,
                         upload=progress.counted_upload(default_upload, bar))
        eng = Engine(rt, info, path, backend, dev)
    if tuned is not None:
        eng.runtime.set_initial_state(tuned)
    return eng


def _read_weights(path: Any, keep_fp16: bool) -> tuple[ModelInfo, dict]:
    """load_weights, with a download bar on a terminal when the model is an http(s) URL."""
    from . import progress

    if not (isinstance(path, str) and path.startswith(("http://", "https://")) and progress.enabled()):
        return load_weights(path, keep_fp16=keep_fp16)
    from .sources import open_source

    src = open_source(path)
    try:
        with progress.bar(src.size, f"downloading {path.rsplit('/', 1)[-1].split('?')[0]}") as bar:
            return load_weights(progress.CountedSource(src, bar), keep_fp16=keep_fp16)
    finally:
        src.close()
