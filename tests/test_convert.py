"""The convert, logits and info commands (the CLI ones through a subprocess)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from webrwkv.convert import convert_main
from webrwkv.errors import WebRwkvError
from webrwkv.models import load_index, load_weights
from webrwkv.reference import forward
from webrwkv.safetensors import read_header
from webrwkv.sources import open_source
from webrwkv.models import VERSIONS as REGISTRY

GOLDEN = Path(__file__).parent / "golden"
VERSIONS = sorted(REGISTRY)  # every version of the registry


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def convert(src: Path, dst: Path, layout: str, dtype: str) -> Path:
    convert_main(argparse.Namespace(input=str(src), output=str(dst), layout=layout, dtype=dtype))
    return dst


def cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "webrwkv", *argv], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_keeps_weights_and_logits(version, tmp_path):
    info, w = load_weights(GOLDEN / f"{version}.st")
    conv = convert(GOLDEN / f"{version}.st", tmp_path / "c.st", "converted", "fp32")
    back = convert(conv, tmp_path / "o.st", "official", "fp32")
    info_c, wc = load_weights(conv)
    info_o, wo = load_weights(back)
    assert info_c.layout == "converted" and info_o.layout == "official"
    for name in w:
        assert np.array_equal(wc[name], w[name]) and np.array_equal(wo[name], w[name]), name
    toks = [int(t) for t in np.load(GOLDEN / f"{version}.npz")["tokens"]]
    ref = forward(w, info, toks, all_logits=True)[0]
    assert np.array_equal(forward(wo, info_o, toks, all_logits=True)[0], ref)
    # the official output has the names and stored shapes of the official file
    shapes = lambda p: {n: t.shape for n, t in read_header(open_source(p)).tensors.items()}  # noqa: E731
    assert shapes(back) == shapes(GOLDEN / f"{version}.st")


@pytest.mark.parametrize("version", VERSIONS)
def test_fp16_converted_output_matches_the_golden_converted_file(version, tmp_path):
    out = convert(GOLDEN / f"{version}.st", tmp_path / "c16.st", "converted", "fp16")
    hdr, gold = read_header(open_source(out)), read_header(open_source(GOLDEN / f"{version}-converted.st"))
    assert {n: (t.dtype, t.shape) for n, t in hdr.tensors.items()} == \
        {n: (t.dtype, t.shape) for n, t in gold.tensors.items()}
    _, a = load_weights(out)
    _, b = load_weights(GOLDEN / f"{version}-converted.st")
    assert all(np.array_equal(a[n], b[n]) for n in b)


def test_bf16_input_and_errors(tmp_path):
    out = convert(GOLDEN / "v6-bf16.st", tmp_path / "v6.st", "official", "fp32")
    _, a = load_weights(out)
    _, b = load_weights(GOLDEN / "v6-bf16.st")
    assert all(np.array_equal(a[n], b[n]) for n in b)
    with pytest.raises(WebRwkvError, match="overwrite"):
        convert(out, out, "official", "fp32")


@pytest.mark.parametrize("name,twin", [("v7.pth", "v7.st"), ("v5-fp16.pth", "v5-converted.st"),
                                       ("v6-bf16.pth", "v6-bf16.st")])
def test_pth_input_without_torch(name, twin, monkeypatch, tmp_path):
    """A torch.save checkpoint converts with no torch installed, to the weights of its safetensors twin."""
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    out = convert(GOLDEN / name, tmp_path / "m.st", "converted", "fp32")
    _, w = load_weights(GOLDEN / twin)
    _, w2 = load_weights(out)
    assert w.keys() == w2.keys() and all(np.array_equal(w[n], w2[n]) for n in w)


@pytest.mark.parametrize("version", ["v5", "v7"])
def test_cli_logits(version, tmp_path):
    g = np.load(GOLDEN / f"{version}.npz")
    toks = ",".join(str(int(t)) for t in g["tokens"])
    r = cli("logits", "--model", str(GOLDEN / f"{version}.st"), "--tokens", toks, "--out", str(tmp_path / "a.npy"),
            "--all")
    assert r.returncode == 0, r.stderr
    a = np.load(tmp_path / "a.npy")
    assert a.dtype == np.float32 and a.shape == g["seq_all"].shape and rel(a, g["seq_all"]) <= 2e-6
    r = cli("logits", "--model", str(GOLDEN / f"{version}-converted.st"), "--tokens", toks,
            "--out", str(tmp_path / "b.npy"), "--backend", "reference")
    assert r.returncode == 0, r.stderr
    b = np.load(tmp_path / "b.npy")
    assert b.shape == (256,) and rel(b, np.load(GOLDEN / f"{version}-fp16.npz")["seq_last"]) <= 2e-6


def test_cli_logits_errors(tmp_path):
    r = cli("logits", "--model", str(GOLDEN / "v4.st"), "--tokens", "1,x", "--out", str(tmp_path / "a.npy"))
    assert r.returncode == 2 and "comma-separated" in r.stderr
    r = cli("logits", "--model", str(GOLDEN / "v4.st"), "--tokens", "1,999", "--out", str(tmp_path / "a.npy"))
    assert r.returncode == 2 and "outside the vocabulary" in r.stderr
    r = cli("logits", "--model", str(tmp_path / "none.st"), "--tokens", "1", "--out", str(tmp_path / "a.npy"))
    assert r.returncode == 2 and "none.st" in r.stderr


def test_cli_info(tmp_path):
    r = cli("info", "--json", str(GOLDEN / "v6-converted.st"))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    info, _ = load_index(GOLDEN / "v6-converted.st")
    assert d == {"version": "v6", "layers": 2, "emb": 64, "heads": 2, "head_size": 32, "vocab": 256,
                 "dim_ffn": 224, "dims": {"time_maa": 16, "time_decay": 32}, "layout": "converted",
                 "dtype": "fp16", "bytes": info.nbytes, "path": str(GOLDEN / "v6-converted.st"), "tuned_state": False,
                 "format": "safetensors"}
    r = cli("info", "--json", str(GOLDEN / "v6-bf16.pth"))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["format"], d["version"], d["layout"], d["dtype"], d["layers"], d["vocab"]) == \
        ("pytorch", "v6", "official", "bf16", 2, 256)
    r = cli("info", "--json", env={"WEBRWKV_MODEL": str(GOLDEN / "v7.st")})
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == "v7"
    r = cli("info", str(GOLDEN / "v4.st"))
    assert r.returncode == 0 and "version" in r.stdout and "v4" in r.stdout
    bundled = sorted((Path(__file__).parents[1] / "models").glob("*.st"))
    if not bundled:
        env = {k: v for k, v in os.environ.items() if k != "WEBRWKV_MODEL"}
        r = subprocess.run([sys.executable, "-m", "webrwkv", "info", "--json"], capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 2 and "no bundled model" in r.stderr


def test_convert_copies_the_vocabulary_next_to_the_output(tmp_path, capsys):
    src, out = tmp_path / "in" / "tiny.st", tmp_path / "out" / "tiny-c16.st"
    src.parent.mkdir()
    out.parent.mkdir()
    src.write_bytes((GOLDEN / "v4.st").read_bytes())
    vocab = "1 'a' 1\n2 'b' 1\n3 'ab' 2\n"
    (tmp_path / "in" / "tiny.vocab.txt").write_text(vocab)
    convert(src, out, "converted", "fp16")
    said = capsys.readouterr().out
    assert (tmp_path / "out" / "tiny-c16.vocab.txt").read_text() == vocab
    assert "vocabulary" in said and str(tmp_path / "out" / "tiny-c16.vocab.txt") in said
    # a model with no vocabulary of its own gets none, and nothing is said about one
    convert(GOLDEN / "v4.st", tmp_path / "plain.st", "converted", "fp16")
    assert not (tmp_path / "plain.vocab.txt").exists() and "vocabulary" not in capsys.readouterr().out
    # converting back into the input's folder under the same stem keeps the one file
    convert(out, tmp_path / "out" / "tiny-c16.safetensors", "official", "fp32")
    assert (tmp_path / "out" / "tiny-c16.vocab.txt").read_text() == vocab
