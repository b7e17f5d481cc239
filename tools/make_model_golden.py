"""Record the bundled model's greedy continuation with the official `rwkv` package into tests/golden/bundled_greedy.json.

Run with the tools environment (torch + rwkv 0.8.32): python tools/make_model_golden.py [--model models/rwkv7-shakespeare.st]
"""
import argparse, hashlib, json, os, sys, tempfile

os.environ["RWKV_V7_ON"] = "1"
os.environ.setdefault("RWKV_JIT_ON", "0")

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "py"))  # webrwkv.sampling (numpy only) draws the sampled tokens
PROMPT = "  HAMLET. To be, or not to be- that is the question:\n"
DTYPES = {"F16": np.float16, "F32": np.float32}


def read_safetensors(path: str) -> dict:
    """Minimal reader: u64 header length, JSON header, then the tensor bytes (F16/F32)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        b, e = h["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype=DTYPES[h["dtype"]]).reshape(h["shape"])
        out[name] = torch.from_numpy(arr.astype(np.float32))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "rwkv7-shakespeare.st"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "golden", "bundled_greedy.json"))
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    from rwkv.model import RWKV
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
    from webrwkv.sampling import Sampler, SamplerParams

    vocab = args.model[: -len(".st")] + ".vocab.txt"
    tok = TRIE_TOKENIZER(vocab)
    prompt_ids = tok.encode(PROMPT)
    with tempfile.TemporaryDirectory() as d:
        torch.save(read_safetensors(args.model), os.path.join(d, "m.pth"))
        model = RWKV(os.path.join(d, "m"), strategy="cpu fp32")
    logits, state = model.forward(prompt_ids, None)
    first = logits.float().numpy()
    ids = []
    for _ in range(args.tokens):
        t = int(torch.argmax(logits))
        ids.append(t)
        logits, state = model.forward([t], state)
    sampled = {"temperature": 0.8, "top_p": 0.9, "seed": 7, "ids": []}
    sampler = Sampler(SamplerParams(temperature=0.8, top_p=0.9, seed=7))
    logits, state = model.forward(prompt_ids, None)
    for _ in range(args.tokens // 2):
        sampled["ids"].append(sampler(logits.float().numpy()))
        logits, state = model.forward([sampled["ids"][-1]], state)
    sampled["text"] = tok.decodeBytes(sampled["ids"]).decode("utf-8", "replace")
    with open(args.model, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    rel = os.path.relpath(args.model, ROOT)
    gold = {"source": "official rwkv 0.8.32, RWKV_V7_ON=1, strategy cpu fp32; greedy argmax; sampled with webrwkv.sampling",
            "model": rel, "model_sha256": sha, "prompt": PROMPT, "prompt_ids": prompt_ids,
            "greedy_ids": ids, "greedy_text": tok.decodeBytes(ids).decode("utf-8", "replace"),
            "sampled": sampled, "prompt_logits": [round(float(x), 5) for x in first]}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(gold, f, indent=1)
        f.write("\n")
    print(PROMPT + gold["greedy_text"])


if __name__ == "__main__":
    sys.exit(main())
