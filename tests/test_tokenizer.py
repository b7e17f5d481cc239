"""World tokenizer against ids from the official rwkv package (tests/golden/tokenizer_ids.json)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from webrwkv.errors import TokenizerError
from webrwkv.tokenizer import (WORLD_VOCAB, StreamDecoder, Tokenizer, default_tokenizer,
                               load_tokenizer_for_model, parse_vocab)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
with open(os.path.join(HERE, "golden", "tokenizer_ids.json"), encoding="utf-8") as _f:
    GOLDEN = json.load(_f)
with open(os.path.join(HERE, "data", "tokenizer_corpus.txt"), encoding="utf-8", newline="") as _f:
    CORPUS = _f.read()[:-1].split("\n")  # one sample per line, split on "\n" only
TEXTS = CORPUS + [c["text"] for c in GOLDEN["texts"]]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return default_tokenizer()


def brute_force_encode(vocab: dict[int, bytes], data: bytes) -> list[int]:
    """Independent statement of the rule: at each position take the longest token that is a prefix."""
    by_bytes = {t: i for i, t in vocab.items() if t}
    longest = max(map(len, by_bytes))
    out, i = [], 0
    while i < len(data):
        n = next(n for n in range(min(longest, len(data) - i), 0, -1) if data[i:i + n] in by_bytes)
        out.append(by_bytes[data[i:i + n]])
        i += n
    return out


def write_vocab(path, entries, newline="\n") -> str:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(f"{i} {lit} {n}{newline}" for i, lit, n in entries))
    return str(path)


# ---- ids equal the official tokenizer's -------------------------------------------------

def test_corpus_is_large_and_matches_golden_lines():
    assert len(CORPUS) >= 300
    assert len(GOLDEN["lines"]) == len(CORPUS)


def test_corpus_lines_match_official_ids(tok):
    wrong = [(n, line) for n, (line, ids) in enumerate(zip(CORPUS, GOLDEN["lines"]), 1) if tok.encode(line) != ids]
    assert not wrong, f"{len(wrong)} lines differ, first: {wrong[:3]}"


def test_whole_corpus_matches_official_ids(tok):
    assert tok.encode("\n".join(CORPUS) + "\n") == GOLDEN["whole_corpus"]


@pytest.mark.parametrize("case", GOLDEN["texts"], ids=lambda c: repr(c["text"][:20]))
def test_extra_texts_match_official_ids(tok, case):
    assert tok.encode(case["text"]) == case["ids"]


@pytest.mark.parametrize("case", GOLDEN["bytes"], ids=lambda c: c["hex"][:16])
def test_invalid_utf8_bytes_match_official_ids(tok, case):
    data = bytes.fromhex(case["hex"])
    assert tok.encode_bytes(data) == case["ids"]
    assert tok.decode_bytes(case["ids"]) == data
    assert tok.decode(case["ids"]) == data.decode("utf-8", errors="replace")


def test_world_vocab_matches_brute_force_on_corpus(tok):
    vocab = parse_vocab(open(WORLD_VOCAB, "rb").read())
    for line in CORPUS[::7]:
        assert tok.encode(line) == brute_force_encode(vocab, line.encode("utf-8")), line


# ---- round trips -------------------------------------------------------------------------

def test_round_trip_text(tok):
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text


def test_round_trip_bytes(tok):
    for data in (bytes(range(256)), "naïve 🙂 中文".encode("utf-8")[:-2], b"\x00\xff" * 100):
        assert tok.decode_bytes(tok.encode_bytes(data)) == data
        assert tok.encode_bytes(bytearray(data)) == tok.encode_bytes(memoryview(data)) == tok.encode_bytes(data)


def test_encode_matches_encode_bytes(tok):
    for text in CORPUS[::5]:
        assert tok.encode(text) == tok.encode_bytes(text.encode("utf-8"))


def test_lone_surrogate_is_a_clear_error(tok):
    with pytest.raises(TokenizerError, match="lone surrogate"):
        tok.encode("abc\ud800")


# ---- vocabulary files ----------------------------------------------------------------------

def test_world_vocab_shape(tok):
    vocab = parse_vocab(open(WORLD_VOCAB, "rb").read())
    assert tok.vocab_size == max(vocab) + 1 > 65000
    assert 0 not in vocab and all(bytes([b]) in vocab.values() for b in range(256))


def test_crlf_and_lf_vocab_files_agree(tmp_path, tok):
    raw = open(WORLD_VOCAB, "rb").read()
    lf = tmp_path / "lf.txt"
    lf.write_bytes(raw.replace(b"\r\n", b"\n"))
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    a, b = Tokenizer(lf), Tokenizer(crlf)
    assert a._id2tok == b._id2tok == tok._id2tok
    text = "\n".join(CORPUS[:60])
    assert a.encode(text) == b.encode(text) == tok.encode(text)


def test_from_text_equals_file(tok):
    other = Tokenizer.from_text(open(WORLD_VOCAB, "rb").read(), "world")
    assert other.encode("\n".join(CORPUS)) == GOLDEN["whole_corpus"][:-1]
    assert other.vocab_size == tok.vocab_size


SMALL = [(1, "'a'", 1), (2, "'b'", 1), (3, "'c'", 1), (4, "'d'", 1), (5, '"ab"', 2), (6, "'abc'", 3),
         (7, "'cd'", 2), (8, "'abcd e'", 6), (9, "' '", 1), (10, "'e'", 1), (11, "b'\\xff'", 1),
         (12, "'\\n'", 1), (13, "'é'", 2), (14, "b'\\xc3'", 1), (15, "'\\u4e2d'", 3), (20, "\"it's\"", 4),
         (21, "'i'", 1), (22, "'t'", 1), (23, "'s'", 1), (24, "\"'\"", 1)]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_custom_small_vocab(tmp_path, newline):
    tok = Tokenizer(write_vocab(tmp_path / "small.txt", SMALL, newline))
    assert tok.vocab_size == 25
    # greedy, not optimal: "abcd" is abc + d although ab + cd would also cover it
    assert tok.encode("abcd") == [6, 4]
    # the walk passes "abcd " (no token, only a prefix of "abcd e") and falls back to the longest token seen: abc
    assert tok.encode("abcd a") == [6, 4, 9, 1]
    assert tok.encode("abcd e") == [8]
    assert tok.encode("it's é\n") == [20, 9, 13, 12]
    assert tok.encode_bytes(b"\xff\xc3a") == [11, 14, 1]
    assert tok.decode([15, 20]) == "中it's"
    for text in ("abcdabcd eab", "cdcdabab  e", "it'sé中abc\n\n'"):
        assert tok.encode(text) == brute_force_encode(parse_vocab("".join(
            f"{i} {lit} {n}\n" for i, lit, n in SMALL)), text.encode("utf-8"))
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("alphabet", [b"ab \t\n\xe4", b"ab c", b"a b", b" xy\x00"])
def test_random_vocabularies_match_brute_force(alphabet):
    # encode cuts the text into chunks and memoizes them; any vocabulary must still give the plain greedy ids
    rnd = random.Random(alphabet)
    for trial in range(30):
        tokens = {bytes([b]) for b in alphabet}
        while len(tokens) < 40:
            tokens.add(bytes(rnd.choice(alphabet) for _ in range(rnd.randint(2, 6))))
        if alphabet == b"ab c":  # space only at the start of tokens
            tokens = {t for t in tokens if b" " not in t[1:]}
        if alphabet == b"a b":  # space inside tokens, never after a space
            tokens = {t for t in tokens if b"  " not in t}
        vocab = dict(enumerate(sorted(tokens), 1))
        tok = Tokenizer.from_text("".join(f"{i} {t!r} {len(t)}\n" for i, t in vocab.items()))
        for _ in range(5):
            data = bytes(rnd.choice(alphabet) for _ in range(rnd.randint(0, 200)))
            assert tok.encode_bytes(data) == brute_force_encode(vocab, data), (vocab, data)


def test_world_vocab_matches_brute_force_on_random_text(tok):
    vocab = parse_vocab(open(WORLD_VOCAB, "rb").read())
    rnd = random.Random(5)
    pieces = [" ", "  ", "\t", "\n", "\r\n", "the", " the", "a", ".", "中", "文", "🙂", "é", "\x00", "1", "==", "-"]
    for _ in range(40):
        data = "".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 80))).encode("utf-8")
        assert tok.encode_bytes(data) == brute_force_encode(vocab, data)


def test_same_bytes_under_two_ids_encode_to_the_later_line(tmp_path):
    tok = Tokenizer(write_vocab(tmp_path / "dup.txt", SMALL + [(30, "'ab'", 2), (31, "'\\x61'", 1)]))
    assert tok.encode("abab a") == [30, 30, 9, 31]
    assert tok.decode([5, 30, 1, 31]) == "ababaa"


def test_missing_byte_in_vocab_is_a_clear_error(tmp_path):
    tok = Tokenizer(write_vocab(tmp_path / "small.txt", SMALL))
    with pytest.raises(TokenizerError, match="byte 0x7a"):
        tok.encode("abz")


@pytest.mark.parametrize("line, message", [
    ("2 'b'", "three fields"),
    ("x 'b' 1", "integers"),
    ("2 'b' one", "integers"),
    ("-2 'b' 1", "negative"),
    ("2 'bb' 1", "2 bytes long but the line says 1"),
    ("2 'é' 1", "2 bytes long but the line says 1"),
    ("2 b 1", "not a python str or bytes literal"),
    ("2 'b 1", "not a python str or bytes literal"),
    ("2 __import__('os') 1", "not a python str or bytes literal"),
    ("2 123 3", "not a str or bytes literal"),
    ("2 ['b'] 1", "not a str or bytes literal"),
    ("1 'a' 1", "appears twice"),
])
def test_malformed_vocab_line(tmp_path, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(f"1 'a' 1\n\n{line}\n3 'c' 1\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=message) as err:
        Tokenizer(path)
    assert f"{path}:3:" in str(err.value)


def test_unreadable_vocab_files(tmp_path):
    with pytest.raises(TokenizerError, match="cannot read"):
        Tokenizer(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="empty"):
        Tokenizer(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes(b"1 'a' 1\n2 '\xe9' 1\n")
    with pytest.raises(TokenizerError, match=":2: .*not valid UTF-8"):
        Tokenizer(tmp_path / "latin1.txt")


def test_unknown_ids_are_clear_errors(tok):
    with pytest.raises(TokenizerError, match="token id 70000 is not in the vocabulary"):
        tok.decode([33155, 70000])
    with pytest.raises(TokenizerError, match="token id -1 is not"):
        tok.decode_bytes([-1])
    with pytest.raises(TokenizerError, match="'x' is not"):
        tok.decode(iter([33155, "x"]))
    with pytest.raises(TokenizerError, match="end-of-text"):
        tok.decode([33155, 0])


# ---- streaming decoder ---------------------------------------------------------------------

def test_stream_decoder_never_splits_a_character(tok):
    lines = [line for line in TEXTS if any(ord(c) > 0x7FF for c in line)]
    assert len(lines) > 50
    split_chars = 0
    for line in lines:
        ids = tok.encode(line)
        dec = StreamDecoder(tok)
        pieces = [dec.feed(i) for i in ids] + [dec.flush()]
        assert "".join(pieces) == tok.decode(ids) == line
        assert not any("\ufffd" in p for p in pieces if "\ufffd" not in line)
        split_chars += sum(1 for i, p in zip(ids, pieces) if p == "" and tok.token_bytes(i))
    assert split_chars > 100  # the corpus really has characters spread over several tokens


def test_stream_decoder_feeds_lists_and_flushes(tok):
    ids = tok.encode("中文🙂👨‍👩‍👧‍👦 ok")
    dec = tok.stream()
    assert dec.feed(ids[:2]) + dec.feed([]) + dec.feed(ids[2:]) + dec.flush() == "中文🙂👨‍👩‍👧‍👦 ok"
    half = tok.encode_bytes("🙂".encode("utf-8")[:3])
    assert dec.feed(half) == "" and dec.flush() == "\ufffd"
    assert dec.feed(tok.encode("é")) == "é"  # the decoder starts afresh after flush


def test_numpy_ids_are_accepted(tok):
    np = pytest.importorskip("numpy")
    ids = tok.encode(CORPUS[90])
    arr = np.array(ids, dtype=np.int64)
    assert tok.decode(arr) == CORPUS[90]
    dec = StreamDecoder(tok)
    assert "".join(dec.feed(i) for i in arr) + dec.flush() == CORPUS[90]


# ---- loading ---------------------------------------------------------------------------------

def test_default_tokenizer_is_cached():
    assert default_tokenizer() is default_tokenizer()
    assert StreamDecoder().tokenizer is default_tokenizer()


def test_load_tokenizer_for_model(tmp_path, tok):
    model = tmp_path / "tiny.st"
    model.write_bytes(b"")
    assert load_tokenizer_for_model(model) is tok
    assert load_tokenizer_for_model(None) is tok
    from webrwkv.server import make_server

    srv = make_server(roots={"models": tmp_path})  # a URL model with no vocabulary beside it: World
    srv.start()
    try:
        assert load_tokenizer_for_model(f"{srv.url}models/tiny.st") is tok
    finally:
        srv.shutdown()
        srv.server_close()
    write_vocab(tmp_path / "tiny.vocab.txt", SMALL)
    own = load_tokenizer_for_model(str(model))
    assert own.vocab_size == 25 and own.encode("abcd") == [6, 4]
    explicit = load_tokenizer_for_model(model, vocab=WORLD_VOCAB)
    assert explicit.encode(CORPUS[0]) == GOLDEN["lines"][0]


# ---- command line ------------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "py"), PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "webrwkv", *args], capture_output=True, env=env, cwd=ROOT, timeout=60)


def test_cli_tokenize_and_detokenize(tmp_path):
    n = next(i for i, line in enumerate(CORPUS) if "👨‍👩‍👧‍👦" in line)
    res = run_cli("tokenize", CORPUS[n])
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == GOLDEN["lines"][n]
    src = tmp_path / "in.txt"
    src.write_bytes(("\n".join(CORPUS) + "\n").encode("utf-8"))
    res = run_cli("tokenize", "--file", str(src))
    assert json.loads(res.stdout) == GOLDEN["whole_corpus"]
    res = run_cli("detokenize", json.dumps(GOLDEN["lines"][n]))
    assert res.returncode == 0 and res.stdout.decode("utf-8") == CORPUS[n] + "\n"


def test_cli_custom_vocab_and_stdin(tmp_path):
    vocab = write_vocab(tmp_path / "small.txt", SMALL)
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "py"))
    res = subprocess.run([sys.executable, "-m", "webrwkv", "tokenize", "--vocab", vocab, "--file", "-"],
                         input="it's abcd\n".encode("utf-8"), capture_output=True, env=env, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [20, 9, 6, 4, 12]


def test_cli_errors():
    res = run_cli("detokenize", "[1, 2")
    assert res.returncode == 2 and b"is not JSON" in res.stderr
    res = run_cli("tokenize")
    assert res.returncode == 2 and b"give either TEXT or --file" in res.stderr
