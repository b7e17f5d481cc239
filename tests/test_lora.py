"""LoRA merging: merged weights against W + (alpha / r) B @ A computed here in numpy, replacement
tensors, logits of the reference and native backends against reference.forward on the merged weights,
the CLI, and the errors a user can cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gpu_util import GOLDEN, device, rel

from webrwkv.engine import load_engine
from webrwkv.errors import ModelFormatError, WebRwkvError
from webrwkv.lora import merge_lora, parse_spec
from webrwkv.models import load_weights
from webrwkv.reference import forward
from webrwkv.safetensors import write_safetensors

ROOT = Path(__file__).resolve().parents[1]
V7, V5 = str(GOLDEN / "v7.st"), str(GOLDEN / "v5.st")
TOKENS = [3, 17, 42, 99, 7, 250]


def lora_pair(rng, out_dim: int, in_dim: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    return (rng.standard_normal((r, in_dim)) * 0.2).astype(np.float32), \
           (rng.standard_normal((out_dim, r)) * 0.2).astype(np.float32)


def v7_lora(tmp_path, rng=None) -> tuple[str, dict]:
    """A LoRA on a linear weight (rank 4) and on the official-layout adapter w1 ([C, D] stored: rank 2),
    plus a replaced vector (stored [1, 1, C]) and a replaced layer norm."""
    rng = rng or np.random.default_rng(0)
    A1, B1 = lora_pair(rng, 64, 64, 4)      # att.key.weight [out 64, in 64]
    A2, B2 = lora_pair(rng, 64, 16, 2)      # att.w1 as stored officially: [C=64, D=16]
    x_k = rng.standard_normal((1, 1, 64)).astype(np.float32)
    ln = rng.standard_normal(64).astype(np.float32)
    t = {"blocks.1.att.key.lora_A": A1, "blocks.1.att.key.lora_B": B1,
         "blocks.0.att.w1.lora_A": A2, "blocks.0.att.w1.lora_B": B2,
         "blocks.1.ffn.x_k": x_k, "blocks.0.ln2.weight": ln}
    path = str(tmp_path / "v7-lora.st")
    write_safetensors(path, t)
    return path, t


def merged_by_hand(weights: dict, t: dict, alpha: float | None) -> dict:
    """The merge written out here; alpha None means alpha = r (scale 1)."""
    w = {k: v.copy() for k, v in weights.items()}
    s4, s2 = (1.0, 1.0) if alpha is None else (alpha / 4, alpha / 2)
    w["blocks.1.att.key.weight"] += s4 * (t["blocks.1.att.key.lora_B"] @ t["blocks.1.att.key.lora_A"])
    w["blocks.0.att.w1"] += s2 * (t["blocks.0.att.w1.lora_B"] @ t["blocks.0.att.w1.lora_A"]).T
    w["blocks.1.ffn.x_k"] = t["blocks.1.ffn.x_k"].reshape(64)
    w["blocks.0.ln2.weight"] = t["blocks.0.ln2.weight"]
    return w


def test_parse_spec():
    assert parse_spec("a/b.st") == ("a/b.st", None)
    assert parse_spec("a/b.st:8") == ("a/b.st", 8.0)
    assert parse_spec("a/b.st:0.5") == ("a/b.st", 0.5)
    assert parse_spec("C:\\x\\b.st") == ("C:\\x\\b.st", None)
    assert parse_spec("https://h/x.st") == ("https://h/x.st", None)


@pytest.mark.parametrize("alpha", [None, 6.0])
def test_merged_weights_equal_numpy_merge(tmp_path, alpha):
    path, t = v7_lora(tmp_path)
    info, w = load_weights(V7)
    before = {k: v.copy() for k, v in w.items()}
    spec = path if alpha is None else f"{path}:{alpha}"
    got = merge_lora(info, w, spec)
    want = merged_by_hand(before, t, alpha)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6, err_msg=k)
        np.testing.assert_array_equal(w[k], before[k])  # the input is not modified
    changed = {k for k in want if not np.array_equal(want[k], before[k])}
    assert changed == {"blocks.1.att.key.weight", "blocks.0.att.w1", "blocks.1.ffn.x_k", "blocks.0.ln2.weight"}
    assert got["blocks.0.att.w1"].shape == (16, 64)


def test_converted_layout_adapter_and_v5_renamed_replacement(tmp_path):
    rng = np.random.default_rng(1)
    info, w = load_weights(V7)
    A, B = lora_pair(rng, 16, 64, 3)  # converted layout: w1 lies [D=16, C=64] like canonical
    p = tmp_path / "conv.st"
    write_safetensors(p, {"blocks.0.att.w1.lora_A": A, "blocks.0.att.w1.lora_B": B}, {"layout": "converted"})
    got = merge_lora(info, w, f"{p}:1.5")
    np.testing.assert_allclose(got["blocks.0.att.w1"], w["blocks.0.att.w1"] + 0.5 * (B @ A), rtol=1e-6, atol=1e-6)

    info5, w5 = load_weights(V5)
    first = rng.standard_normal((2, 32)).astype(np.float32)  # converted name, [H, S] as stored
    A, B = lora_pair(rng, 64, 64, 2)
    p5 = tmp_path / "v5.st"
    write_safetensors(p5, {"blocks.1.att.time_first": first, "blocks.0.att.gate.lora_A": A,
                           "blocks.0.att.gate.lora_B": B, "head.weight": w5["head.weight"] * 2})
    got5 = merge_lora(info5, w5, str(p5))
    np.testing.assert_array_equal(got5["blocks.1.att.time_faaaa"], first.reshape(64))
    np.testing.assert_array_equal(got5["head.weight"], w5["head.weight"] * 2)
    np.testing.assert_allclose(got5["blocks.0.att.gate.weight"], w5["blocks.0.att.gate.weight"] + B @ A,
                               rtol=1e-6, atol=1e-6)


def test_reference_backend_logits_use_the_merged_weights(tmp_path):
    path, t = v7_lora(tmp_path)
    info, w = load_weights(V7)
    want, _ = forward(merged_by_hand(w, t, 8.0), info, TOKENS, all_logits=True)
    eng = load_engine(V7, backend="reference", lora=[f"{path}:8"])
    eng.runtime.push(0, TOKENS)
    got = eng.runtime.run(all_logits=True)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    plain, _ = forward(w, info, TOKENS, all_logits=True)
    assert rel(plain, want) > 1e-2  # the LoRA really changes the output


def test_native_backend_with_lora_matches_reference(tmp_path):
    dev = device()  # skips without a GPU adapter
    path, t = v7_lora(tmp_path)
    info, w = load_weights(V7)
    want, _ = forward(merged_by_hand(w, t, 8.0), info, TOKENS, all_logits=True)
    eng = load_engine(V7, backend="native", lora=[f"{path}:8"], device=dev)
    eng.runtime.push(0, TOKENS)
    out = {}
    while 0 not in out:
        out.update(eng.runtime.run(all_logits=True))
    assert rel(out[0], want) <= 1e-3


def test_cli_generate_with_lora(tmp_path):
    path, t = v7_lora(tmp_path)
    info, w = load_weights(V7)
    merged = merged_by_hand(w, t, 2.0)
    chars = "\n" + "".join(map(chr, range(32, 127)))
    vocab = tmp_path / "ascii.vocab.txt"
    vocab.write_text("\n".join(f"{i + 1} {c.encode()!r} 1" for i, c in enumerate(chars)) + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "WEBRWKV_MODEL"}
    r = subprocess.run([sys.executable, "-m", "webrwkv", "generate", "--backend", "reference", "--model", V7,
                        "--vocab", str(vocab), "--lora", f"{path}:2", "--prompt", "Hi", "--temperature", "0",
                        "--max-tokens", "8", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    logits, state = forward(merged, info, res["prompt_ids"])
    ids = []
    for _ in range(len(res["ids"])):  # greedy over the vocabulary's ids, as generate draws them
        x = logits.copy()
        x[len(chars) + 1:] = -np.inf
        ids.append(int(np.argmax(x)))
        if ids[-1] == 0:
            break
        logits, state = forward(merged, info, [ids[-1]], state)
    assert res["ids"] == ids and len(ids) > 0


def _write(tmp_path, tensors, name="bad.st", **meta):
    p = tmp_path / name
    write_safetensors(p, {k: np.asarray(v, np.float32) for k, v in tensors.items()}, meta or None)
    return str(p)


def test_errors_name_the_tensor(tmp_path):
    info, w = load_weights(V7)
    A, B = np.ones((2, 64)), np.ones((64, 2))
    cases = [
        ({"blocks.9.att.key.lora_A": A, "blocks.9.att.key.lora_B": B}, "blocks.9.att.key"),  # no such layer
        ({"blocks.0.att.nope": np.ones(64)}, "blocks.0.att.nope"),
        ({"blocks.0.att.key.lora_A": np.ones((2, 32)), "blocks.0.att.key.lora_B": B}, "blocks.0.att.key"),
        ({"blocks.0.att.key.lora_A": np.ones((3, 64)), "blocks.0.att.key.lora_B": B}, "same rank"),
        ({"blocks.0.att.key.lora_A": A}, "blocks.0.att.key.lora_B"),
        ({"blocks.0.att.x_k": np.ones(63)}, "blocks.0.att.x_k"),
        ({"blocks.0.att.w1.lora_A": np.ones((2, 64)), "blocks.0.att.w1.lora_B": np.ones((16, 2))}, "[64, 16]"),
        ({"blocks.0.att.x_k.lora_A": np.ones((2, 1)), "blocks.0.att.x_k.lora_B": np.ones((64, 2))}, "not a matrix"),
    ]
    for i, (tensors, needle) in enumerate(cases):
        p = _write(tmp_path, tensors, f"bad{i}.st")
        with pytest.raises(ModelFormatError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            merge_lora(info, w, p)
    with pytest.raises(ModelFormatError, match="cannot read the LoRA file"):
        merge_lora(info, w, str(tmp_path / "missing.st"))
    with pytest.raises(ModelFormatError, match="PyTorch checkpoint"):
        merge_lora(info, w, str(tmp_path / "adapter.pth") + ":16")
    junk = tmp_path / "junk.st"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(ModelFormatError):
        merge_lora(info, w, str(junk))
    with pytest.raises(ModelFormatError, match="layout"):
        merge_lora(info, w, _write(tmp_path, {"blocks.0.att.x_k": np.ones(64)}, "lay.st", layout="sideways"))
    with pytest.raises(WebRwkvError, match="LoRA"):  # through load_engine too
        load_engine(V7, backend="reference", lora=[str(tmp_path / "bad0.st")])
