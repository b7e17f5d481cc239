"""Record the native backend's greedy token ids for the browser end-to-end test (Browser = native).

Usage: .venv/bin/python tools/make_browser_golden.py [--out tests/golden/browser_greedy.json]
Runs each tiny golden model on the native GPU runtime (wgpu) at temperature 0 from fixed prompt ids;
tests/e2e/engine.spec.js loads the same files in the browser and must produce the same ids. The state cases
start from a state file (tests/e2e/state.spec.js loads it with engine.loadState).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from webrwkv.generation import GenerationStats, generate_stream
from webrwkv.gpu import open_device
from webrwkv.models import load_weights
from webrwkv.models.states import read_state
from webrwkv.runtime import Runtime
from webrwkv.sampling import SamplerParams
from webrwkv.tokenizer import default_tokenizer, load_tokenizer_for_model

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
# one model per version, covering fp32 and bf16 inputs and both layouts (the GPU conversions)
MODELS = ["v7.st", "v6-bf16.st", "v5-converted.st", "v4.st", "v7de-converted.st"]
# (model, state file): a state-tuned v6 (safetensors and .pth state files) and v7
STATES = [("v6-converted.st", "v6-state.st"), ("v6-converted.st", "v6-state.pth"), ("v7.st", "v7-state.st")]
STATE_PROMPT = [1, 72, 101]  # short: a state's effect fades over the tokens read after it
PROMPT = [1, 72, 101, 108, 108, 112, 33, 11, 200, 3]
MAX_TOKENS = 16


BUNDLED = ROOT / "models" / "rwkv7-shakespeare.st"
BUNDLED_PROMPT = "ROMEO:\nBut soft, what light"  # text: the browser tokenizes it with the model's vocabulary
BUNDLED_TOKENS = 8


def greedy(dev, path: Path, prompt: list[int], max_tokens: int, tokenizer=None, state=None) -> list[int]:
    info, w = load_weights(path)
    rt = Runtime(dev, info, w)
    if state is not None:
        rt.set_initial_state(read_state(state, info))
    ids: list[int] = []
    for item in generate_stream(rt, tokenizer or default_tokenizer(), prompt, SamplerParams(temperature=0.0),
                                max_tokens, eos_id=None):
        if not isinstance(item, GenerationStats):
            ids.append(item[0])
    return ids


def margin(path: Path, prompt: list[int], ids: list[int], state=None) -> float:
    """Smallest gap between the top two logits along the greedy path, from the numpy reference;
    a tiny gap would let float rounding on another GPU pick the other token."""
    from webrwkv import reference

    info, w = load_weights(path)
    w = {k: v.astype(np.float16).astype(np.float32) for k, v in w.items()}  # what the GPU stores
    start = read_state(state, info) if state is not None else None
    logits, _ = reference.forward(w, info, prompt + ids[:-1], start, all_logits=True)
    steps = logits[len(prompt) - 1:]
    assert [int(np.argmax(s)) for s in steps] == ids, "the reference disagrees with the native greedy ids"
    top2 = np.sort(steps, axis=-1)[:, -2:]
    return float((top2[:, 1] - top2[:, 0]).min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(GOLDEN / "browser_greedy.json"))
    args = ap.parse_args()
    dev = open_device("native")
    cases = []
    for m in MODELS:
        ids = greedy(dev, GOLDEN / m, PROMPT, MAX_TOKENS)
        gap = margin(GOLDEN / m, PROMPT, ids)
        if gap < 1e-3:
            raise SystemExit(f"{m}: top-2 logit gap {gap:.2e} is too small for a cross-GPU test; change PROMPT")
        cases.append({"model": m, "prompt_ids": PROMPT, "max_tokens": MAX_TOKENS, "ids": ids, "min_gap": gap})
    if BUNDLED.is_file():  # the bundled model, from text, as the chat page would run it
        tok = load_tokenizer_for_model(BUNDLED)
        prompt = tok.encode(BUNDLED_PROMPT)
        ids = greedy(dev, BUNDLED, prompt, BUNDLED_TOKENS, tok)
        gap = margin(BUNDLED, prompt, ids)
        if gap < 1e-3:
            raise SystemExit(f"bundled model: top-2 logit gap {gap:.2e} is too small; change BUNDLED_PROMPT")
        cases.append({"model": BUNDLED.name, "bundled": True, "prompt": BUNDLED_PROMPT, "prompt_ids": prompt,
                      "max_tokens": BUNDLED_TOKENS, "ids": ids, "min_gap": gap,
                      "size": BUNDLED.stat().st_size, "sha256": hashlib.sha256(BUNDLED.read_bytes()).hexdigest()})
    state_cases = []
    for m, st in STATES:
        ids = greedy(dev, GOLDEN / m, STATE_PROMPT, MAX_TOKENS, state=GOLDEN / st)
        plain = greedy(dev, GOLDEN / m, STATE_PROMPT, MAX_TOKENS)
        gap = margin(GOLDEN / m, STATE_PROMPT, ids, GOLDEN / st)
        if gap < 1e-3 or ids[:4] == plain[:4]:
            raise SystemExit(f"{m} + {st}: top-2 logit gap {gap:.2e}, or the same first ids as without the state; "
                             "change STATE_PROMPT")
        state_cases.append({"model": m, "state": st, "prompt_ids": STATE_PROMPT, "max_tokens": MAX_TOKENS,
                            "ids": ids, "ids_without_state": plain, "min_gap": gap})
    doc = {"source": "native backend (wgpu), temperature 0, made by tools/make_browser_golden.py",
           "adapter": dev.adapter_name, "cases": cases, "state_cases": state_cases}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    for c in cases + state_cases:
        print(c["model"], c.get("state", ""), c["ids"], f"min top-2 gap {c['min_gap']:.3g}")


if __name__ == "__main__":
    main()
