"""Tokenizer speed: vocabulary load time and encode/decode MB/s on a few kinds of text (CPU time of this process).

Usage: python bench/bench_tokenizer.py [--mb 2] [--repeat 3] [--official]
"encode MB/s" starts each run with an empty chunk cache; "warm cache" runs again with it filled;
"walk only" is the plain trie walk over the whole text, with no chunks and no cache.
(--official also times the `rwkv` package's tokenizer when it is installed, and checks the ids agree.)
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "py"))

from webrwkv.tokenizer import WORLD_VOCAB, Tokenizer  # noqa: E402

WORDS = ("the of and to in is that for it as with was on be by this are or from at which have an not but they his "
         "her their one all we can has more will would there been if when who about into other time some could them "
         "these only new than most then may also like over such first after people many where well very two because "
         "through just any between should each those under while same both how own long great still world good year "
         "made work state life part number might being before even last water found place day small every model "
         "token river mountain quickly slowly bright quiet engine signal window garden yesterday tomorrow").split()


def english_text(nbytes: int, seed: int = 1) -> str:
    rnd, out, size = random.Random(seed), [], 0
    while size < nbytes:
        words = [rnd.choice(WORDS) for _ in range(rnd.randint(5, 18))]
        words[0] = words[0].capitalize()
        sentence = " ".join(words) + rnd.choice(".,;!?") + (" " if rnd.random() < 0.85 else "\n\n")
        out.append(sentence)
        size += len(sentence)
    return "".join(out)


def repeat_to(text: str, nbytes: int) -> str:
    return text * max(1, nbytes // max(1, len(text.encode("utf-8"))))


def best_time(fn, arg, repeat: int, before=None) -> float:
    best = float("inf")
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.process_time()
        fn(arg)
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=float, default=2.0, help="size of each text in MB")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (the best is kept)")
    ap.add_argument("--official", action="store_true", help="also time rwkv.rwkv_tokenizer.TRIE_TOKENIZER")
    args = ap.parse_args()
    nbytes = int(args.mb * 1e6)

    t0 = time.process_time()
    tok = Tokenizer()
    t_load = time.process_time() - t0
    t0 = time.process_time()
    tok._prepare()
    t_trie = time.process_time() - t0
    print(f"vocabulary load {t_load * 1e3:.0f} ms, trie and chunk regex (first encode) {t_trie * 1e3:.0f} ms, "
          f"vocab_size {tok.vocab_size}")

    with open(os.path.join(ROOT, "tests", "data", "tokenizer_corpus.txt"), encoding="utf-8") as f:
        corpus = f.read()
    texts = {
        "corpus (multilingual, code, emoji)": repeat_to(corpus, nbytes),
        "English-ish prose": english_text(nbytes),
        "Chinese": repeat_to("".join(line for line in corpus.split("\n") if "，" in line or "。" in line), nbytes),
        "Python-like code": repeat_to("def f(x):\n    if x > 1:\n        return x * f(x - 1)\n    return 1\n\n", nbytes),
    }
    official = None
    if args.official:
        try:
            from rwkv.rwkv_tokenizer import TRIE_TOKENIZER
            official = TRIE_TOKENIZER(WORLD_VOCAB)
        except ImportError:
            print("(rwkv not installed: no official column)")

    head = (f"| {'text':36} | {'MB':>5} | {'bytes/token':>11} | {'encode MB/s':>11} | {'warm cache':>10} "
            f"| {'walk only':>9} | {'decode MB/s':>11} |")
    head += " official encode MB/s |" if official else ""
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for name, text in texts.items():
        data = text.encode("utf-8")
        ids = tok.encode_bytes(data)
        mb = len(data) / 1e6
        enc = mb / best_time(tok.encode_bytes, data, args.repeat, before=tok._cache.clear)
        warm = mb / best_time(tok.encode_bytes, data, args.repeat)
        walk = mb / best_time(tok._walk, data, args.repeat)
        dec = mb / best_time(tok.decode_bytes, ids, args.repeat)
        row = (f"| {name:36} | {mb:5.2f} | {len(data) / len(ids):11.2f} | {enc:11.2f} | {warm:10.2f} "
               f"| {walk:9.2f} | {dec:11.1f} |")
        if official:
            assert official.encodeBytes(data) == ids
            row += f" {mb / best_time(official.encodeBytes, data, 1):20.2f} |"
        print(row)


if __name__ == "__main__":
    main()
