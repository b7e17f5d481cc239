"""Python side of the browser worker (web/worker.js): GPU device, streamed model load, generation.

The worker calls these functions; weight bytes stay in JS (fetch -> GPU buffer), Python only
decides where each byte range goes and which GPU conversions run afterwards.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .errors import WebRwkvError
from .generation import END_OF_TEXT, GenerationStats, generate_stream_async
from .sampling import SamplerParams

_dev: Any = None        # BrowserDevice
_load: Any = None       # browser_loader.StreamingLoad in progress
_eng: dict = {}         # runtime, tokenizer, info, name
_saved: dict = {}       # name -> (state, pending ids, tail text)
_stop = False
_pending: list[int] = []  # sampled but not yet run: the model reads it first next time
_tail = ""              # the last characters of what the model has read (to separate chat turns)
_stats: dict = {}


def _device():
    from .gpu.browser import BrowserDevice

    return BrowserDevice


async def open_device() -> dict:
    """Open (or reopen after a loss) the GPU device; returns {adapter, features, limits}."""
    global _dev
    if _dev is None or _dev.lost is not None:
        _dev = await _device().open()
    from .tokenizer import default_tokenizer

    default_tokenizer()  # parse the World vocabulary once, before any model load
    return {"adapter": _dev.adapter_name, "features": sorted(_dev.features), "limits": dict(_dev.limits)}


def lose_device() -> None:
    """Destroy the GPU device as a driver reset would (to exercise the page's recovery)."""
    if _dev is not None:
        _dev._dev.destroy()


def js_device() -> Any:
    """The GPUDevice itself (the worker watches its `lost` promise)."""
    return _dev._dev if _dev is not None else None


def plan_load(prefix: Any, size: int, url: str, vocab_text: str | None, tuning: Any = None,
              quant: str | None = None) -> dict:
    """Parse the header bytes, allocate the model's GPU buffers and say where each file range goes.
    quant "int8" / "nf4" quantizes the layers' matrices on the GPU as their bytes arrive.

    Returns {device, size, dataStart, writes: [[file_start, file_end, buffer, offset, tag], ...]}.
    """
    global _load
    from .browser_loader import StreamingLoad

    if _dev is None or _dev.lost is not None:
        raise WebRwkvError("the GPU device is not open (it was lost?); load the model again")
    unload()
    data = prefix.to_bytes() if hasattr(prefix, "to_bytes") else bytes(prefix)
    tuning = tuning.to_py() if hasattr(tuning, "to_py") else tuning
    _load = StreamingLoad(_dev, data, int(size), url, vocab_text, tuning=dict(tuning or {}),
                          quant=str(quant or "none"))
    return {"device": _dev._dev, "size": _load.size, "dataStart": _load.data_start, "writes": _load.writes}


def trace_memory(start: bool) -> int:
    """Start tracing Python allocations, or stop and return the peak bytes since the start."""
    import tracemalloc

    if start:
        tracemalloc.start()
        return 0
    peak = tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else 0
    tracemalloc.stop()
    return int(peak)


def write_done(tag: int, buf: Any = None) -> None:
    """Every byte of write `tag` is queued; a staged tensor (in `buf`) is converted on the GPU now."""
    if _load is not None:
        _load.write_done(int(tag), buf)


async def finish_load() -> dict:
    """Run the remaining conversions, build the runtime and return the model's description."""
    global _load
    if _load is None:
        raise WebRwkvError("no model load is in progress; call load again")
    ld, _load = _load, None
    runtime, tokenizer, info = await ld.finish()
    _eng["prefill_kernel"] = await _warm_up(runtime)
    _eng.update(runtime=runtime, tokenizer=tokenizer, info=info, name=ld.name)
    reset()
    return {"name": ld.name, **info.to_dict(), "adapter": _dev.adapter_name, "prefill_kernel": _eng["prefill_kernel"],
            "quant": ld.quant, "weight_bytes": runtime.weight_bytes}


async def _warm_up(rt: Any) -> str:
    """Compile the prefill and decode kernels now, not on first use. If the browser's WGSL compiler
    refuses the tiled GEMM kernel (Chrome's uniformity analysis is stricter than wgpu-native's),
    prefill falls back to the GEMV kernel, token rows in parallel. Returns the prefill kernel."""
    kernel = "gemm"
    rt.push(0, [0, 0])
    await rt.run_async()
    await _dev.sync_async()
    if _dev.errors and rt.k.tuning.gemv_max_t < 2:
        _dev.errors.clear()
        rt.k.tuning.gemv_max_t = 1 << 30
        rt._ops.clear()  # the cached per-shape op lists hold the GEMM dispatches
        rt.push(0, [0, 0])
        await rt.run_async()
        kernel = "gemv"
    rt.push(0, [0])
    await rt.run_async()
    await _dev.sync_async()
    _dev.raise_errors("preparing the GPU kernels")  # a kernel the browser cannot compile fails here
    return kernel


def unload() -> None:
    """Free the model's GPU memory (the device stays open)."""
    global _load
    if _load is not None:
        _load.cancel()
        _load = None
    _eng.clear()
    _saved.clear()
    if _dev is not None and _dev.lost is None:
        _dev.free_owned()  # GPU memory goes back now, not whenever JS collects the buffers


def _need() -> tuple[Any, Any]:
    if "runtime" not in _eng:
        raise WebRwkvError("no model is loaded; load one first")
    return _eng["runtime"], _eng["tokenizer"]


def stop() -> None:
    """Ask the running generation to end after the current token."""
    global _stop
    _stop = True


def reset() -> None:
    """Start over from an empty state."""
    global _pending, _tail
    rt, _ = _need()
    rt.reset(0)
    _pending, _tail = [], ""


async def save_state(name: str) -> None:
    """Remember the current state (and what the model has yet to read) under `name`."""
    rt, _ = _need()
    state = await rt.get_state_async(0)
    _saved[str(name)] = ({k: np.array(v, copy=True) for k, v in state.items()}, list(_pending), _tail)


def restore_state(name: str) -> None:
    """Go back to a state saved with save_state."""
    global _pending, _tail
    rt, _ = _need()
    if str(name) not in _saved:
        raise WebRwkvError(f"no saved state named {name!r}; save one first")
    state, pending, tail = _saved[str(name)]
    rt.set_state(0, {k: np.array(v, copy=True) for k, v in state.items()})
    _pending, _tail = list(pending), tail


def _params(o: dict) -> tuple[SamplerParams, int, list[str]]:
    seed = o.get("seed")
    p = SamplerParams(temperature=float(o.get("temperature", 1.0)), top_p=float(o.get("top_p", 0.85)),
                      top_k=int(o.get("top_k", 0)), presence_penalty=float(o.get("presence_penalty", 0.0)),
                      frequency_penalty=float(o.get("frequency_penalty", 0.0)),
                      seed=None if seed is None else int(seed))
    stops = o.get("stop") or []
    return p.validate(), int(o.get("max_tokens", 128)), [str(s) for s in ([stops] if isinstance(stops, str) else stops)]


async def generate(prompt: str, options: Any, emit: Any) -> dict:
    """Stream tokens of a continuation of the current state; emit(token, text) per token.

    With options["chat"], a blank line is inserted first when the previous text did not end in one.
    """
    global _stop, _pending, _tail
    rt, tok = _need()
    o = options.to_py() if hasattr(options, "to_py") else dict(options or {})
    params, max_tokens, stops = _params(o)
    if not isinstance(prompt, str):  # token ids
        given = [int(t) for t in (prompt.to_py() if hasattr(prompt, "to_py") else prompt)]
        text = tok.decode([t for t in given if t != END_OF_TEXT])
    else:
        text = prompt
        if o.get("chat") and _tail and not _tail.endswith("\n\n"):
            text = ("\n" if _tail.endswith("\n") else "\n\n") + text
        given = tok.encode(text)
    ids = _pending + given
    if not ids:
        raise WebRwkvError("the prompt is empty; type some text")
    _stop = False
    _pending = []
    dev = _dev
    t0 = time.perf_counter()
    t_first = wait_first = None
    calls_first = 0
    out_ids: list[int] = []
    stats: GenerationStats | None = None
    reason = ""
    eos = None if o.get("ignore_eos") else END_OF_TEXT
    async for item in generate_stream_async(rt, tok, ids, params, max_tokens, stops, eos_id=eos):
        if isinstance(item, GenerationStats):
            stats = item
            break
        token, piece = item
        if t_first is None:
            t_first, wait_first = time.perf_counter(), dev.wait_s
        out_ids.append(token)
        emit(token, piece)
        dev.js_calls += 1
        if len(out_ids) == 1:
            calls_first = dev.js_calls
        if _stop:
            reason = "stopped"
            break
    t_end = time.perf_counter()
    dev.raise_errors("generation")  # a GPU validation error would otherwise show only as wrong tokens
    _pending = out_ids[-1:]  # the last sampled token has not been run
    read = text + tok.decode([t for t in out_ids if t != END_OF_TEXT])
    _tail = (_tail + read)[-16:]
    steps = max(len(out_ids) - 1, 0)
    decode_s = (t_end - t_first) if t_first is not None else 0.0
    py_s = max(decode_s - (dev.wait_s - wait_first), 0.0) if t_first is not None else 0.0
    prefill_s = (t_first or t_end) - t0
    _stats.update({
        "prompt_tokens": len(ids), "completion_tokens": len(out_ids),
        "prefill_s": prefill_s, "decode_s": decode_s,
        "prefill_tps": len(ids) / prefill_s if prefill_s > 0 else 0.0,
        "decode_tps": steps / decode_s if decode_s > 0 and steps else 0.0,
        "py_step_s": py_s / steps if steps else 0.0,
        "py_share": py_s / decode_s if decode_s > 0 and steps else 0.0,
        "js_calls_per_step": (dev.js_calls - calls_first) / steps if steps else 0.0,
        "stop_reason": reason or (stats.stop_reason if stats else "max_tokens"),
        "finish_reason": "length" if (not reason and stats and stats.stop_reason == "max_tokens") else "stop",
        "ids": out_ids,
    })
    return dict(_stats)


def stats() -> dict:
    """The last generation's numbers, plus the adapter."""
    return {**_stats, "adapter": _dev.adapter_name if _dev else "", "prefill_kernel": _eng.get("prefill_kernel", "")}


# --- for the page: the model card and token counts (no engine state is touched) ----------------

def model_card(text: str) -> dict:
    """A model card (<model>.card.json) checked and filled in; raises ModelCardError when it is wrong."""
    from .model_card import parse_card

    return parse_card(str(text)).to_dict()


def count_tokens(text: str) -> int:
    """How many tokens `text` is for the loaded model's tokenizer."""
    _, tok = _need()
    return len(tok.encode(str(text)))
