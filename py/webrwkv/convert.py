"""The `logits`, `info` and `convert` commands: model inspection, reference/GPU logits and layout conversion."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from .errors import WebRwkvError
from .models import ModelInfo, default_model_path, load_index, load_weights, tuned_state_names
from .models.loader import from_arrays, to_layout


def parse_tokens(text: str) -> list[int]:
    """'1,2,3' -> [1, 2, 3]."""
    try:
        toks = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise WebRwkvError(f"--tokens {text!r} is not a comma-separated list of token ids, e.g. 1,2,3") from None
    if not toks:
        raise WebRwkvError("--tokens is empty: pass at least one token id, e.g. --tokens 1,2,3")
    return toks


def native_logits(model: str, tokens: list[int], all_logits: bool, adapter: Any = None) -> np.ndarray:
    """Logits from the GPU engine (imported only when asked for)."""
    try:
        from .engine import load_engine
    except ImportError as e:
        raise WebRwkvError(f"the native GPU backend is not available ({e}); install webrwkv[native] "
                           "or use --backend reference") from None
    engine = load_engine(model=model, backend="native", max_batch=1, adapter=adapter)
    rt = engine.runtime
    rt.push(0, tokens)
    out: dict = {}
    while 0 not in out:
        out.update(rt.run(all_logits=all_logits))
    return np.asarray(out[0], dtype=np.float32)


def logits_main(args: argparse.Namespace) -> int:
    """webrwkv logits --model PATH --tokens 1,2,3 --out FILE.npy [--backend reference|native] [--all]"""
    tokens = parse_tokens(args.tokens)
    if args.backend == "native":
        logits = native_logits(args.model, tokens, args.all, getattr(args, "adapter", None))
    else:
        from .reference import forward

        info, weights = load_weights(args.model)
        logits, _ = forward(weights, info, tokens, all_logits=args.all)
    try:
        np.save(args.out, np.asarray(logits, dtype=np.float32))
    except OSError as e:
        raise WebRwkvError(f"cannot write {args.out}: {e.strerror}; check the folder exists") from None
    return 0


def describe(info: ModelInfo) -> dict:
    """The fields `webrwkv info --json` prints."""
    return {"version": info.version, "layers": info.n_layer, "emb": info.n_embd, "heads": info.n_head,
            "head_size": info.head_size, "vocab": info.vocab, "dim_ffn": info.dim_ffn, "dims": info.dims,
            "layout": info.layout, "dtype": info.dtype, "bytes": info.nbytes, "path": info.path}


def info_main(args: argparse.Namespace) -> int:
    """webrwkv info [--json] [MODEL]: describe a model (default: the bundled one)."""
    from .checkpoints import sniff
    from .sources import open_source

    path = args.model or default_model_path()
    with open_source(path) as src:
        info, refs = load_index(src)
        head = src.read(0, min(src.size, 16))
    info.path = os.fspath(path)
    d = describe(info)
    d["tuned_state"] = any(n in refs for n in tuned_state_names(info))  # starts from its time_state tensors
    d["format"] = "pytorch" if sniff(head) == "zip" else "safetensors"
    if args.json:
        print(json.dumps(d))
    else:
        for k, v in d.items():
            print(f"{k:10} {v}")
    return 0


def convert_main(args: argparse.Namespace) -> int:
    """webrwkv convert IN OUT [--layout official|converted] [--dtype fp16|fp32]: IN is a .st or a .pth"""
    from .safetensors import write_safetensors

    src = os.fspath(args.input)
    info, weights = load_weights(src)  # safetensors or a torch.save .pth, read without torch
    tensors = to_layout(info, weights, args.layout)
    if args.dtype == "fp16":
        big = [n for n, a in tensors.items() if np.abs(a).max(initial=0) > 65504]
        if big:
            raise WebRwkvError(f"tensor '{big[0]}' has values beyond the fp16 range; convert with --dtype fp32")
    if os.path.abspath(args.output) == os.path.abspath(src):
        raise WebRwkvError("the output would overwrite the input: choose another output path")
    try:
        write_safetensors(args.output, tensors, metadata={"format": "pt", "layout": args.layout}, dtype=args.dtype)
    except OSError as e:
        raise WebRwkvError(f"cannot write {args.output}: {e.strerror or e}; check the folder exists "
                           "and has room") from None
    print(f"{info.version} L{info.n_layer} C{info.n_embd} -> {args.output} ({args.layout}, {args.dtype})")
    vocab = copy_vocab(src, os.fspath(args.output))
    if vocab:
        print(f"vocabulary {vocab[0]} -> {vocab[1]}")
    return 0


def vocab_path(model: str) -> str:
    """Where a model's own vocabulary lives: `<model stem>.vocab.txt` next to it."""
    return os.path.join(os.path.dirname(model), os.path.splitext(os.path.basename(model))[0] + ".vocab.txt")


def copy_vocab(src: str, dst: str) -> tuple[str, str] | None:
    """Copy the input model's vocabulary next to the output model; (from, to), or None when there is none."""
    if "://" in src or not os.path.isfile(vocab_path(src)):
        return None
    a, b = vocab_path(src), vocab_path(dst)
    if os.path.exists(b) and os.path.samefile(a, b):
        return a, b
    try:  # through a new private folder next to b, renamed into place: no existing name is followed
        tmpdir = tempfile.mkdtemp(prefix=".webrwkv-write-", dir=os.path.dirname(os.path.abspath(b)))
        try:
            shutil.copyfile(a, os.path.join(tmpdir, "vocab.txt"))
            os.replace(os.path.join(tmpdir, "vocab.txt"), b)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    except OSError as e:
        raise WebRwkvError(f"cannot copy the vocabulary {a} to {b}: {e.strerror or e}; copy it by hand") from None
    return a, b
