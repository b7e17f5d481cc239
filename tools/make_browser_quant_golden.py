"""Record the native backend's greedy token ids with quantized weights, for the browser end-to-end test
of quantization on load (tests/e2e/quant.spec.js: the browser must produce the same ids).

Usage: .venv/bin/python tools/make_browser_quant_golden.py [--out tests/golden/browser_quant_greedy.json]
Runs tiny golden models on the native GPU runtime (wgpu) with quant int8 / nf4 at temperature 0 from
fixed prompt ids, and checks with the numpy reference on the dequantized weights that no step's top-2
logits are so close that float rounding on another GPU could pick the other token.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from webrwkv import quant, reference
from webrwkv.generation import GenerationStats, generate_stream
from webrwkv.gpu import open_device
from webrwkv.models import load_weights
from webrwkv.runtime import Runtime
from webrwkv.sampling import SamplerParams
from webrwkv.tokenizer import default_tokenizer

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
# fp32 (converted to fp16 on the GPU first) and bf16 inputs, both quantizations
CASES = [("v7.st", "int8"), ("v7.st", "nf4"), ("v6-bf16.st", "nf4")]
PROMPT = [1, 72, 101, 108, 108, 112, 33, 11, 200, 3]
MAX_TOKENS = 12


def greedy(dev, path: Path, fmt: str) -> list[int]:
    info, w = load_weights(path)
    rt = Runtime(dev, info, w, quant=fmt)
    ids: list[int] = []
    for item in generate_stream(rt, default_tokenizer(), PROMPT, SamplerParams(temperature=0.0), MAX_TOKENS,
                                eos_id=None):
        if not isinstance(item, GenerationStats):
            ids.append(item[0])
    return ids


def margin(path: Path, fmt: str, ids: list[int]) -> float:
    """Smallest top-2 logit gap along the greedy path, from the numpy reference on the weights the GPU
    uses (fp16, then quantized and dequantized for the layers' matrices)."""
    info, w = load_weights(path)
    w = {k: v.astype(np.float16).astype(np.float32) for k, v in w.items()}
    for k, v in w.items():
        if k.startswith("blocks.") and v.ndim >= 2:
            w[k] = getattr(quant, f"dequantize_{fmt}")(*getattr(quant, f"quantize_{fmt}")(v))
    logits, _ = reference.forward(w, info, PROMPT + ids[:-1], all_logits=True)
    steps = logits[len(PROMPT) - 1:]
    assert [int(np.argmax(s)) for s in steps] == ids, "the reference disagrees with the native greedy ids"
    top2 = np.sort(steps, axis=-1)[:, -2:]
    return float((top2[:, 1] - top2[:, 0]).min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(GOLDEN / "browser_quant_greedy.json"))
    args = ap.parse_args()
    dev = open_device("native")
    cases = []
    for model, fmt in CASES:
        ids = greedy(dev, GOLDEN / model, fmt)
        gap = margin(GOLDEN / model, fmt, ids)
        if gap < 1e-3:
            raise SystemExit(f"{model} {fmt}: top-2 logit gap {gap:.2e} is too small for a cross-GPU test")
        cases.append({"model": model, "quant": fmt, "prompt_ids": PROMPT, "max_tokens": MAX_TOKENS, "ids": ids,
                      "min_gap": gap})
    doc = {"source": "native backend (wgpu), quantized on load, temperature 0, made by "
                     "tools/make_browser_quant_golden.py", "adapter": dev.adapter_name, "cases": cases}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    for c in cases:
        print(c["model"], c["quant"], c["ids"], f"min top-2 gap {c['min_gap']:.3g}")


if __name__ == "__main__":
    main()
