"""Regenerate tests/golden/tokenizer_ids.json with the official `rwkv` package's World tokenizer.

Run with an interpreter that has `rwkv` installed:  python tools/make_tokenizer_golden.py
The corpus (tests/data/tokenizer_corpus.txt) holds one sample per line, split on "\\n" only.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random

import rwkv
from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "tests", "data", "tokenizer_corpus.txt")
OUT = os.path.join(ROOT, "tests", "golden", "tokenizer_ids.json")


def read_corpus(path: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    assert text.endswith("\n"), "the corpus must end with a newline"
    return text[:-1].split("\n")


def extra_texts() -> list[str]:
    """Samples a one-line corpus cannot hold: line breaks of every kind, long runs, big mixes."""
    texts = ["\r\n", "a\r\nb\r\n", "lone\rcarriage\rreturns", "\r\r\n\n\r", "Hello\n\nWorld\n\n\n", "\n" * 25,
             "def f():\n    return 1\n\n\nclass A:\n\tpass\n", "\n \n  \n   \n\t\n", " " * 5000, "\t" * 1000,
             "x" * 3000, "🙂" * 700, "中" * 1500, "\n\n" + " " * 37 + "\n", "", "\u0000", "\ufeffBOM first",
             "User: hi\n\nAssistant: hello\n\nUser:", "a\u200db\u200cc\u2060d", "\U0010FFFF\U000E0001\U000F0000"]
    # every code point class near the UTF-8 length boundaries
    texts.append("".join(chr(c) for c in (0x7F, 0x80, 0x7FF, 0x800, 0xFFFF, 0x10000, 0x10FFFF)))
    rnd = random.Random(7)
    texts.append("".join(chr(rnd.choice([rnd.randint(0x20, 0x7E), rnd.randint(0xA0, 0xD7FF), rnd.randint(0xE000, 0xFFFD),
                                         rnd.randint(0x10000, 0x1FFFF)])) for _ in range(4000)))
    return texts


def extra_bytes() -> list[bytes]:
    """Byte strings that are not valid UTF-8, for encode_bytes."""
    rnd = random.Random(11)
    return [bytes(range(256)), bytes(range(255, -1, -1)), b"\xff\xfe\xfd", b"\xe4\xbd", b"abc\xe4\xbd\xa0\xe4",
            b"\xf0\x9f\x99", b"\xc0\xaf\x80\x80", b"\xed\xa0\x80", "é".encode("latin-1") * 10,
            bytes(rnd.randrange(256) for _ in range(3000))]


def main() -> None:
    vocab = os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt")
    tok = TRIE_TOKENIZER(vocab)
    lines = read_corpus(CORPUS)
    golden = {
        "about": "ids from the official rwkv package's TRIE_TOKENIZER (rwkv_vocab_v20230424); "
                 "made by tools/make_tokenizer_golden.py",
        "rwkv_version": importlib.metadata.version("rwkv"),
        "lines": [tok.encode(line) for line in lines],
        "whole_corpus": tok.encode("\n".join(lines) + "\n"),
        "texts": [{"text": t, "ids": tok.encode(t)} for t in extra_texts()],
        "bytes": [{"hex": b.hex(), "ids": tok.encodeBytes(b)} for b in extra_bytes()],
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8", newline="\n") as f:
        json.dump(golden, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT}: {len(lines)} lines, {len(golden['texts'])} texts, {len(golden['bytes'])} byte strings")


if __name__ == "__main__":
    main()
