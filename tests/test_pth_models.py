"""Models from torch.save .pth files (tools/make_golden.py): the same weights and bit-identical logits as
their safetensors twins (reference, GPU, CLI, over HTTP), and the official package's logits within the
error the safetensors goldens show."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gpu_util import GOLDEN, device, drain, one_by_one, rel

from webrwkv.models import load_weights
from webrwkv.reference import forward, step
from webrwkv.server import Handler, StaticServer

VERSIONS = ["v4", "v5", "v6", "v7"]
# (.pth, its safetensors twin with the same values, golden logits of the official package on them)
CASES = [(f"{v}{d}.pth", f"{v}{t}.st", f"{v}{d}.npz") for v in VERSIONS
         for d, t in (("", ""), ("-fp16", "-converted"), ("-bf16", "-bf16"))]
# measured: at most 7.3e-7 relative L2 (seq, step and state) on these weights, fp32/fp16/bf16 alike
TOL = 3e-6


@pytest.mark.parametrize("pth,twin,gold", CASES)
def test_same_weights_and_bit_identical_reference_logits(pth, twin, gold):
    info, w = load_weights(GOLDEN / pth)
    info2, w2 = load_weights(GOLDEN / twin)
    assert (info.version, info.n_layer, info.n_embd, info.dims) == (info2.version, info2.n_layer, info2.n_embd,
                                                                   info2.dims)
    assert info.layout == "official" and info.dtype == {"": "fp32", "-fp16": "fp16", "-bf16": "bf16"}[
        pth[2:].removesuffix(".pth")]
    assert w.keys() == w2.keys() and all(np.array_equal(w[n], w2[n]) for n in w)
    toks = np.load(GOLDEN / gold)["tokens"]
    a, sa = forward(w, info, toks, all_logits=True)
    b, sb = forward(w2, info2, toks, all_logits=True)
    assert np.array_equal(a, b) and all(np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("pth,twin,gold", CASES)
def test_matches_the_official_package(pth, twin, gold):
    info, w = load_weights(GOLDEN / pth)
    g = np.load(GOLDEN / gold)
    logits, state = forward(w, info, g["tokens"], all_logits=True)
    assert rel(logits, g["seq_all"]) <= TOL and rel(logits[-1], g["seq_last"]) <= TOL
    for name, arr in state.items():
        assert rel(arr, g[f"state:{name}"]) <= TOL, name
    s, out = None, []
    for tok in g["tokens"]:
        lg, s = step(w, info, int(tok), s)
        out.append(lg)
    assert rel(np.stack(out), g["step"]) <= TOL


@pytest.mark.parametrize("version", VERSIONS)
def test_gpu_logits_from_pth_equal_safetensors(version):
    """On the GPU: the fp16 .pth against its converted-layout twin, the bf16 .pth against its own twin."""
    from webrwkv.runtime import Runtime

    dev = device()
    toks = [int(t) for t in np.load(GOLDEN / f"{version}.npz")["tokens"]]
    for pth, twin in ((f"{version}-fp16.pth", f"{version}-converted.st"), (f"{version}-bf16.pth", f"{version}-bf16.st")):
        rts = [Runtime(dev, *load_weights(GOLDEN / p, keep_fp16=True)) for p in (pth, twin)]
        for rt in rts:
            rt.push(0, toks)
        a, b = (drain(rt, 0, all_logits=True) for rt in rts)
        assert a.shape == (len(toks), 256) and np.array_equal(a, b), pth
        assert np.array_equal(one_by_one(rts[0], toks[:4]), one_by_one(rts[1], toks[:4]))
        g = np.load(GOLDEN / pth.replace(".pth", ".npz"))
        assert rel(a, g["seq_all"]) <= 1e-3  # the GPU's own tolerance against the package (tests/test_cli_native)


def cli(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "WEBRWKV_MODEL"}
    return subprocess.run([sys.executable, "-m", "webrwkv", *argv], capture_output=True, text=True, env=env,
                          timeout=180)


class Counting(Handler):
    def _serve(self, body: bool) -> None:
        self.server.log.append((self.path, self.headers.get("Range")))
        super()._serve(body)


@pytest.fixture
def served():
    srv = StaticServer(("127.0.0.1", 0), {"models": GOLDEN}, handler=Counting)
    srv.log = []
    srv.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}/models/"
    srv.shutdown()
    srv.server_close()


def test_cli_generate_logits_and_info_from_a_pth_file_and_url(served, tmp_path):
    """`--model model.pth` and `--model https://…/model.pth` generate what the safetensors twin generates."""
    srv, base = served
    vocab = tmp_path / "v.txt"
    vocab.write_text("".join(f"{i} {chr(96 + i)!r} 1\n" for i in range(1, 27)))
    gen = ["generate", "--prompt", "abcab", "--max-tokens", "12", "--temperature", "0", "--json", "--vocab", str(vocab)]
    runs = {}
    for model in (str(GOLDEN / "v7-fp16.pth"), base + "v7-fp16.pth", str(GOLDEN / "v7-converted.st")):
        for backend in ("native", "reference"):
            r = cli(*gen, "--model", model, "--backend", backend)
            assert r.returncode == 0, r.stderr
            runs[model, backend] = json.loads(r.stdout.strip().splitlines()[-1])["ids"]
    assert len(set(map(tuple, runs.values()))) == 1 and len(runs[str(GOLDEN / "v7-converted.st"), "native"]) > 0
    pth = [(p, rng) for p, rng in srv.log if p.endswith("v7-fp16.pth")]
    assert all(rng and rng.startswith("bytes=") for _, rng in pth)  # ranges only, never the whole file
    r = cli("info", "--json", base + "v5-bf16.pth")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["version"], d["dtype"], d["format"], d["path"]) == ("v5", "bf16", "pytorch", base + "v5-bf16.pth")
    toks = ",".join(str(int(t)) for t in np.load(GOLDEN / "v6.npz")["tokens"])
    for model, out in ((GOLDEN / "v6.pth", "a.npy"), (GOLDEN / "v6.st", "b.npy")):
        r = cli("logits", "--model", str(model), "--tokens", toks, "--out", str(tmp_path / out), "--all",
                "--backend", "native")
        assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_model_dir_lists_and_serves_pth_like_st(tmp_path):
    """`webrwkv serve --model-dir DIR`: .pth files are listed and served by range as .st ones are."""
    import http.client
    import shutil

    from webrwkv.server import make_server

    for name in ("v7.pth", "v7.st"):
        shutil.copy(GOLDEN / name, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a model")
    srv = make_server("127.0.0.1", 0, {"models": tmp_path})
    srv.start()
    try:
        conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
        conn.request("GET", "/models/index.json")
        listed = json.loads(conn.getresponse().read())["models"]
        assert [(m["name"], m["size"]) for m in listed] == [(n, (GOLDEN / n).stat().st_size) for n in ("v7.pth", "v7.st")]
        conn.request("GET", "/models/v7.pth", headers={"Range": "bytes=0-3"})
        resp = conn.getresponse()
        assert resp.status == 206 and resp.read() == b"PK\x03\x04"
        assert resp.headers["Content-Type"] == "application/octet-stream"
        conn.close()
    finally:
        srv.shutdown()
        srv.server_close()


def test_pth_over_http_costs_the_requests_of_its_twin_and_checks_its_zip_headers(tmp_path):
    """Natively over HTTP the storages are placed from the zip directory (no request per tensor); each
    placed local header rides along with its tensor's bytes and is compared: a file whose header is not
    where the directory says is refused, never loaded with misplaced weights."""
    import shutil
    import zipfile

    from webrwkv.errors import ModelFormatError

    for n in ("v7-fp16.pth", "v7-converted.st"):
        shutil.copy(GOLDEN / n, tmp_path / n)
    data = bytearray((GOLDEN / "v7-fp16.pth").read_bytes())
    entry = zipfile.ZipFile(GOLDEN / "v7-fp16.pth").getinfo("v7-fp16/data/5")
    data[entry.header_offset + 30 + len("v7-fp16/data/")] = ord("9")  # its local header names data/9
    (tmp_path / "moved.pth").write_bytes(bytes(data))
    srv = StaticServer(("127.0.0.1", 0), {"models": tmp_path}, handler=Counting)
    srv.log = []
    srv.start()
    base = f"http://127.0.0.1:{srv.server_address[1]}/models/"
    try:
        counts = {}
        for name in ("v7-fp16.pth", "v7-converted.st"):
            srv.log.clear()
            counts[name] = (load_weights(base + name), len(srv.log))
        (_, w1), n1 = counts["v7-fp16.pth"]
        (_, w2), n2 = counts["v7-converted.st"]
        assert all(np.array_equal(w1[k], w2[k]) for k in w2)
        assert n1 <= n2 + 1  # the index: the tail beyond the first 64 KB; the headers come with the data
        with pytest.raises(ModelFormatError, match="zip header at byte .* not where"):
            load_weights(base + "moved.pth")
        with pytest.raises(ModelFormatError, match="names another file"):
            load_weights(tmp_path / "moved.pth")  # a local file: its headers are read at once
    finally:
        srv.shutdown()
        srv.server_close()
