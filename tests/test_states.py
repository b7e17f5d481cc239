"""Tuned states: a state-tuned checkpoint's blocks.N.att.time_state is every slot's initial state, and a state file
(safetensors or .pth) loads into the slots, on the reference and the GPU. v5 / v6 against the official package
run on the same checkpoint (tests/golden/vN-state.npz from tools/make_golden.py), v7 (which the package cannot
tune) against the reference with the state set directly; states that do not fit the model are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gpu_util import GOLDEN, device, drain, one_by_one, rel

from webrwkv import reference as ref
from webrwkv.engine import load_engine
from webrwkv.errors import ModelFormatError, SourceError, WebRwkvError
from webrwkv.models import init_state, initial_state, load_index, load_weights
from webrwkv.models.states import read_state
from webrwkv.reference import ReferenceRuntime
from webrwkv.safetensors import read_header, read_tensor, write_safetensors
from webrwkv.sources import BytesSource, open_source

ROOT = Path(__file__).resolve().parents[1]
REF_TOL = 2e-6  # reference vs package: measured at most 6.2e-7 (v5, v6: sequence, step, final state)
GPU_TOL = 2e-6  # GPU (fp16-exact weights) vs package: measured at most 8.1e-7
SAME = 1e-6     # GPU vs reference on the same weights and state: measured at most 7.1e-7


def tensors(name: str) -> dict:
    with open_source(GOLDEN / name) as src:
        return {n: read_tensor(src, t) for n, t in read_header(src).tensors.items()}


def time_states(version: str) -> dict:
    return tensors(f"{version}-state.st")


def tuned_checkpoint(version: str, tmp_path: Path) -> Path:
    """The fp16 golden model in the official layout with the state file's time_state tensors in it (what a
    state-tuned model holds)."""
    from webrwkv.models.loader import to_layout

    out = tmp_path / f"{version}-tuned.st"
    info, w = load_weights(GOLDEN / f"{version}-converted.st")
    write_safetensors(out, {**to_layout(info, w, "official"), **time_states(version)}, dtype="fp32")
    return out


def test_a_state_file_is_att_kv_transposed_and_zero_shifts():
    info, _ = load_index(GOLDEN / "v6-converted.st")
    st = read_state(GOLDEN / "v6-state.st", info)
    raw = time_states("v6")
    assert list(st) == list(init_state(info))
    for i in range(info.n_layer):
        assert np.array_equal(st[f"blocks.{i}.att_kv"], raw[f"blocks.{i}.att.time_state"].swapaxes(1, 2))
        assert not st[f"blocks.{i}.att_x"].any() and not st[f"blocks.{i}.ffn_x"].any()
    pth = read_state(GOLDEN / "v6-state.pth", info)  # the same tensors as torch.save wrote them
    assert all(np.array_equal(pth[k], st[k]) for k in st)
    mem = read_state(BytesSource((GOLDEN / "v6-state.st").read_bytes(), "mem.st"), info)
    assert all(np.array_equal(mem[k], st[k]) for k in st)


@pytest.mark.parametrize("version", ["v5", "v6"])
def test_reference_with_a_state_file_matches_the_official_package(version):
    info, w = load_weights(GOLDEN / f"{version}-converted.st")
    g = np.load(GOLDEN / f"{version}-state.npz")
    rt = ReferenceRuntime((info, w), max_batch=2, token_chunk_size=64)
    rt.set_initial_state(read_state(GOLDEN / f"{version}-state.st", info))
    rt.push(0, g["tokens"].tolist())
    assert rel(rt.run(all_logits=True)[0], g["seq_all"]) <= REF_TOL
    assert max(rel(v, g[f"state:{k}"]) for k, v in rt.get_state(0).items()) <= REF_TOL
    rt.reset(1)  # reset returns to the loaded state: token by token from it
    steps = []
    for t in g["tokens"].tolist():
        rt.push(1, [t])
        steps.append(rt.run()[1])
    assert rel(np.stack(steps), g["step"]) <= REF_TOL
    plain, _ = ref.forward(w, info, g["tokens"], all_logits=True)
    assert rel(plain, g["seq_all"]) > 0.05  # the state matters: without it the logits are far off


@pytest.mark.parametrize("version", ["v5", "v6"])
def test_a_state_tuned_checkpoint_starts_from_its_state(version, tmp_path):
    """Reference (forward, runtime) and GPU from the checkpoint alone, against the package on that checkpoint."""
    from webrwkv.runtime import Runtime

    path = tuned_checkpoint(version, tmp_path)
    info, w = load_weights(path)
    _, refs = load_index(path)
    assert refs["blocks.1.att.time_state"].transform == "transpose"
    g = np.load(GOLDEN / f"{version}-state.npz")
    toks = g["tokens"].tolist()
    assert rel(ref.forward(w, info, toks, all_logits=True)[0], g["seq_all"]) <= REF_TOL
    rt = Runtime(device(), info, w, max_batch=2, token_chunk_size=8)
    rt.push(1, toks)
    assert rel(drain(rt, 1, all_logits=True), g["seq_all"]) <= GPU_TOL
    assert max(rel(v, g[f"state:{k}"]) for k, v in rt.get_state(1).items()) <= GPU_TOL
    assert rel(one_by_one(rt, toks, 0), g["step"]) <= GPU_TOL  # one_by_one resets: back to the tuned state
    rt.set_initial_state(init_state(info), 0)  # a zero state instead: the package's logits are not reached
    rt.push(0, toks)
    assert rel(drain(rt, 0, all_logits=True), g["seq_all"]) > 0.05
    rt.set_initial_state(None, 0)  # None: the checkpoint's own state again
    rt.push(0, toks)
    assert rel(drain(rt, 0, all_logits=True), g["seq_all"]) <= GPU_TOL


def test_v7_state_on_the_gpu_equals_the_reference_with_the_state_set_directly():
    from webrwkv.runtime import Runtime

    info, w = load_weights(GOLDEN / "v7-converted.st")
    raw = time_states("v7")
    direct = {**init_state(info), **{f"blocks.{i}.att_kv": raw[f"blocks.{i}.att.time_state"].swapaxes(1, 2)
                                     for i in range(info.n_layer)}}
    toks = np.random.default_rng(5).integers(0, 256, 40).tolist()
    want, want_state = ref.forward(w, info, toks, direct, all_logits=True)
    rt = Runtime(device(), info, w, max_batch=3, token_chunk_size=16)
    rt.set_initial_state(read_state(GOLDEN / "v7-state.st", info), slot=2)  # one slot only
    rt.push(2, toks)
    rt.push(0, toks)
    out: dict = {}
    while len(out) < 2:
        out.update(rt.run(all_logits=True))
    assert rel(out[2], want) <= SAME
    assert max(rel(rt.get_state(2)[k], want_state[k]) for k in want_state) <= SAME
    assert rel(out[0], ref.forward(w, info, toks, all_logits=True)[0]) <= SAME  # slot 0 kept the zero state
    assert rel(out[0], want) > 0.05
    assert rel(one_by_one(rt, toks[:12], 2), want[:12]) <= SAME


def test_own_makes_a_state_the_one_none_returns_to():
    """What the streamed loader does once a tuned checkpoint's vectors arrive (the runtime exists before)."""
    from webrwkv.runtime import Runtime

    info, w = load_weights(GOLDEN / "v6-converted.st")
    tuned = read_state(GOLDEN / "v6-state.st", info)
    rt = Runtime(device(), info, w, max_batch=2)
    rt.set_initial_state(tuned, own=True)
    rt.set_initial_state(init_state(info), slot=1)
    assert not rt.get_state(1)["blocks.0.att_kv"].any()
    rt.set_initial_state(None, slot=1)
    assert all(np.array_equal(rt.get_state(s)[k], tuned[k]) for s in (0, 1) for k in tuned)


def test_engine_state_option_and_load_state(tmp_path):
    """load_engine(state=...) (what --state and the API server pass) on both backends, and Engine.load_state."""
    g = np.load(GOLDEN / "v6-state.npz")
    toks = g["tokens"].tolist()
    for backend in ("reference", "native"):
        eng = load_engine(GOLDEN / "v6-converted.st", backend=backend, max_batch=2,
                          state=str(GOLDEN / "v6-state.pth"))
        rt = eng.runtime
        for s in (0, 1):
            rt.push(s, toks)
        out: dict = {}
        while len(out) < 2:
            out.update(rt.run(all_logits=True))
        assert rel(out[0], g["seq_all"]) <= GPU_TOL and rel(out[1], g["seq_all"]) <= GPU_TOL, backend
        eng.load_state(None, slot=1)
        rt.push(1, toks)
        assert rel(drain(rt, 1, all_logits=True), g["seq_all"]) > 0.05
        eng.load_state(GOLDEN / "v6-state.st", slot=1)
        rt.push(1, toks)
        assert rel(drain(rt, 1, all_logits=True), g["seq_all"]) <= GPU_TOL


def write_state(path: Path, layers: int, shape=(2, 32, 32), value=0.1) -> Path:
    write_safetensors(path, {f"blocks.{i}.att.time_state": np.full(shape, value, np.float32) for i in range(layers)})
    return path


def test_states_that_do_not_fit_are_refused_with_the_reason(tmp_path):
    info, _ = load_index(GOLDEN / "v6.st")
    with pytest.raises(ModelFormatError, match=r"3 layers \(0-2\), this model has 2 \(0-1\)"):
        read_state(write_state(tmp_path / "3.st", 3), info)
    with pytest.raises(ModelFormatError, match=r"1 layer \(0\), this model has 2"):
        read_state(write_state(tmp_path / "1.st", 1), info)
    with pytest.raises(ModelFormatError, match=r"shape \[4, 16, 16\]; this model \(2 heads of 32\) needs \[2, 32, 32\]"):
        read_state(write_state(tmp_path / "h.st", 2, (4, 16, 16)), info)
    with pytest.raises(ModelFormatError, match="holds no tuned state"):
        read_state(GOLDEN / "v7.st", info)  # a model, not a state file
    with pytest.raises(ModelFormatError, match="NaN"):
        read_state(write_state(tmp_path / "nan.st", 2, value=np.nan), info)
    with pytest.raises(SourceError, match="no such file"):
        read_state(tmp_path / "missing.st", info)
    v4, _ = load_index(GOLDEN / "v4.st")
    with pytest.raises(WebRwkvError, match="v4 models have no tunable state"):
        read_state(GOLDEN / "v6-state.st", v4)
    # a refused state changes nothing in the runtime it was meant for
    eng = load_engine(GOLDEN / "v6.st", backend="reference")
    eng.runtime.push(0, [1, 2, 3])
    before = eng.runtime.run()[0]
    with pytest.raises(ModelFormatError):
        eng.load_state(tmp_path / "3.st")
    eng.runtime.reset(0)
    eng.runtime.push(0, [1, 2, 3])
    assert np.array_equal(eng.runtime.run()[0], before)


def test_a_partly_tuned_checkpoint_is_refused(tmp_path):
    t = tensors("v5.st")
    write_safetensors(tmp_path / "p.st", {**t, "blocks.0.att.time_state": np.zeros((2, 32, 32), np.float32)})
    with pytest.raises(ModelFormatError, match=r"'blocks\.1\.att\.time_state' is missing"):
        load_index(tmp_path / "p.st")
    write_safetensors(tmp_path / "q.st", {**t, **{f"blocks.{i}.att.time_state": np.zeros((2, 32, 16), np.float32)
                                                  for i in range(2)}})
    with pytest.raises(ModelFormatError, match=r"time_state' has shape \[2, 32, 16\]"):
        load_index(tmp_path / "q.st")


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "webrwkv", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_generate_and_batch_take_a_state_file(tmp_path):
    """--state on the reference backend: greedy ids are the argmax path of the reference from that state."""
    model, state = str(GOLDEN / "v6-converted.st"), str(GOLDEN / "v6-state.st")
    chars = "".join(map(chr, range(32, 127)))  # one token per printable character (id 1 + its index)
    vocab = tmp_path / "ascii.vocab.txt"
    vocab.write_text("".join(f"{i + 1} {c.encode()!r} 1\n" for i, c in enumerate(chars)), encoding="utf-8")
    info, w = load_weights(model)

    def greedy(start):
        logits, st = ref.forward(w, info, [1 + chars.index("H")], start)
        ids = []
        for _ in range(6):
            logits[1 + len(chars):] = -np.inf  # ids past the vocabulary are never drawn
            ids.append(int(np.argmax(logits)))
            logits, st = ref.forward(w, info, [ids[-1]], st)
        return ids

    def run(*extra):
        out = cli("generate", "--backend", "reference", "--model", model, "--vocab", str(vocab), "--temperature", "0",
                  "--max-tokens", "6", "--json", "--prompt", "H", *extra)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])["ids"]

    tuned = greedy(read_state(state, info))
    assert run("--state", state) == tuned and 0 not in tuned
    assert run() == greedy(None) != tuned
    prompts = tmp_path / "p.txt"
    prompts.write_text("H\nH\n")  # both slots start from the state: the same greedy text as generate's
    out = cli("batch", "--backend", "reference", "--model", model, "--vocab", str(vocab), "--state", state,
              "--prompts", str(prompts), "--max-tokens", "6", "--temperature", "0")
    assert out.returncode == 0, out.stderr
    text = "".join(chars[i - 1] for i in tuned)
    assert sorted(out.stdout.splitlines()) == [f"[0] {text}", f"[1] {text}"]
    bad = cli("chat", "--backend", "reference", "--model", str(GOLDEN / "v4.st"), "--state", state)
    assert bad.returncode == 2 and "v4 models have no tunable state" in bad.stderr


def test_chat_takes_a_state_file_like_a_tuned_checkpoint(tmp_path):
    """chat --state FILE answers as the same weights do with the state inside the checkpoint, not as without."""
    chars = "\n" + "".join(map(chr, range(32, 127)))  # chat turns hold newlines
    vocab = tmp_path / "ascii.vocab.txt"
    vocab.write_text("".join(f"{i + 1} {c.encode()!r} 1\n" for i, c in enumerate(chars)), encoding="utf-8")
    tuned = tuned_checkpoint("v6", tmp_path)

    def chat(model, *extra):
        out = subprocess.run([sys.executable, "-m", "webrwkv", "chat", "--backend", "reference", "--model", str(model),
                              "--vocab", str(vocab), "--temperature", "0", "--max-tokens", "8", *extra],
                             input="Hello\n", capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout

    with_file = chat(GOLDEN / "v6-converted.st", "--state", str(GOLDEN / "v6-state.st"))
    assert with_file.strip() and with_file == chat(tuned)
    assert with_file != chat(GOLDEN / "v6-converted.st")


def test_info_tells_a_tuned_checkpoint_and_a_state_file_is_not_a_model(tmp_path):
    tuned = tuned_checkpoint("v6", tmp_path)
    for model, want in ((tuned, True), (GOLDEN / "v6-converted.st", False)):
        out = cli("info", "--json", str(model))
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["tuned_state"] is want
    for state in ("v6-state.st", "v6-state.pth"):  # passed as the model by mistake
        out = cli("info", str(GOLDEN / state))
        assert out.returncode == 2 and "a state file, not a model" in out.stderr and "--state" in out.stderr
    # the converted layout keeps the tuned state: convert, load again, the same initial state
    out = cli("convert", str(tuned), str(tmp_path / "c.st"), "--layout", "converted", "--dtype", "fp32")
    assert out.returncode == 0, out.stderr
    a, b = load_weights(tuned), load_weights(tmp_path / "c.st")
    sa, sb = initial_state(a[0], a[1]), initial_state(b[0], b[1])
    assert sa["blocks.1.att_kv"].any() and all(np.array_equal(sa[k], sb[k]) for k in sa)
