"""Device limits, row-block splitting, refusal of models too big for the adapter, device loss, CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from gpu_util import GOLDEN, device, drain, fp16_model, rel

from webrwkv import reference as ref
from webrwkv.errors import DeviceLostError, GpuError, TokenizerError


def test_limits_are_the_adapter_maxima():
    dev = device()
    for key in ("max_buffer_size", "max_storage_binding", "max_storage_buffers_per_stage"):
        assert dev.limits[key] > 0
    assert dev.limits["max_storage_binding"] >= 128 * 2**20  # adapters give at least the default


@pytest.mark.parametrize("version", ["v5", "v7"])
def test_row_block_split_under_small_binding_limit(version):
    from webrwkv.gpu import open_device
    from webrwkv.runtime import Runtime

    info, w = fp16_model(version)
    dev = open_device("native", max_binding_override=20000)
    assert dev.limits["max_storage_binding"] == 20000
    rt = Runtime(dev, info, w, max_batch=1, token_chunk_size=8)
    assert rt.split_matrices >= 3  # emb, head, ffn and the concatenated projections are split
    toks = np.random.default_rng(5).integers(0, info.vocab, 19).tolist()
    want, _ = ref.forward(w, info, toks, all_logits=True)
    rt.push(0, toks)
    assert rel(drain(rt, 0, all_logits=True), want) <= 5e-6  # fp16-exact weights: measured ~1e-6
    rt.push(0, [3])
    assert rel(drain(rt, 0), ref.forward(w, info, toks + [3])[0]) <= 5e-6


def test_too_large_model_refused_before_allocation():
    from webrwkv.gpu import open_device
    from webrwkv.runtime import Runtime

    info, w = fp16_model("v6")
    dev = open_device("native", max_binding_override=4096)
    calls = []
    real = dev.buffer
    dev.buffer = lambda *a, **k: calls.append(a) or real(*a, **k)
    with pytest.raises(GpuError, match="maxStorageBufferBindingSize.*quantiz"):
        Runtime(dev, info, w, max_batch=4, token_chunk_size=128)
    assert calls == []



def test_limits_are_checked_from_the_header_before_any_tensor_is_read(monkeypatch, tmp_path):
    """An fp32 model over the adapter's limits is refused before its tensors are widened in host RAM."""
    from safetensors.numpy import load_file, save_file

    from webrwkv import engine as engine_mod
    from webrwkv.models import load_weights

    path = tmp_path / "f32.st"
    save_file({n: a.astype(np.float32) for n, a in load_file(GOLDEN / "v6.st").items()}, path)
    read = []
    monkeypatch.setattr(engine_mod, "load_weights", lambda *a, **k: read.append(a) or load_weights(*a, **k))
    with pytest.raises(GpuError, match="maxStorageBufferBindingSize"):
        engine_mod.load_engine(str(path), max_batch=4, token_chunk_size=128, max_binding_override=4096)
    assert read == []


def test_a_weight_beyond_fp16_names_its_tensor(tmp_path):
    """An fp32 weight of 1e30 would become inf in fp16 and then NaN logits: the upload names the tensor."""
    from webrwkv.errors import ModelFormatError
    from webrwkv.runtime import Runtime
    from webrwkv.models import load_weights

    info, w = load_weights(GOLDEN / "v6.st")
    w = {n: np.asarray(a, np.float32) for n, a in w.items()}
    w["blocks.1.ffn.value.weight"][3, 5] = 1e30
    with pytest.raises(ModelFormatError, match=r"blocks\.1\.ffn\.value.*fp16 range"):
        Runtime(device(), info, w, max_batch=1, token_chunk_size=16)


def test_lost_device_raises_instead_of_hanging():
    from webrwkv.gpu import open_device
    from webrwkv.runtime import Runtime

    info, w = fp16_model("v4")
    dev = open_device("native")
    rt = Runtime(dev, info, w)
    rt.push(0, [1, 2, 3])
    drain(rt, 0)
    dev.lose()
    rt.push(0, [4])
    with pytest.raises(DeviceLostError):
        rt.run()
    with pytest.raises(DeviceLostError):
        rt.get_state(0)


def test_no_subgroup_gemv_matches():
    from webrwkv.gpu import open_device
    from webrwkv.runtime import Runtime

    info, w = fp16_model("v6")
    dev = open_device("native", use_subgroups=False)
    assert "subgroups" not in dev.features
    rt = Runtime(dev, info, w)
    toks = [7, 8, 9, 10]
    for t in toks:
        rt.push(0, [t])
        got = drain(rt, 0)
    assert rel(got, ref.forward(w, info, toks)[0]) <= 5e-6


def test_devices_command_lists_adapters(capsys):
    from webrwkv.gpu.native import devices_main

    device()
    assert devices_main(SimpleNamespace(json=True)) == 0
    rows = json.loads(capsys.readouterr().out)
    assert any(r["usable"] for r in rows)
    assert all(r["max_storage_binding"] > 0 for r in rows)


def test_bad_adapter_names_are_refused():
    from webrwkv.gpu import open_device

    device()
    with pytest.raises(GpuError, match="no adapter matches"):
        open_device("native", adapter="no-such-gpu-xyz")
    with pytest.raises(GpuError, match="out of range"):
        open_device("native", adapter=99)


def test_engine_native_matches_reference_engine():
    from webrwkv.engine import load_engine

    device()
    path = GOLDEN / "v7-converted.st"
    gpu = load_engine(path, backend="native", max_batch=2, token_chunk_size=16)
    cpu = load_engine(path, backend="reference", max_batch=2, token_chunk_size=16)
    assert gpu.info.version == cpu.info.version == "v7"
    toks = list(range(30))
    outs = []
    for eng in (gpu, cpu):
        eng.runtime.push(1, toks)
        outs.append(drain(eng.runtime, 1))
    assert rel(outs[0], outs[1]) <= 5e-6
    # the World tokenizer has more ids than this 256-id model: reported as an error
    with pytest.raises(TokenizerError, match="vocabulary"):
        gpu.tokenizer
    assert "vocabulary" in gpu.vocab_mismatch
