"""RWKV World tokenizer: greedy longest match over UTF-8 bytes, and a decoder that is safe to stream.
Pure Python (no C extensions, no numpy), so the same code runs in CPython and in Pyodide."""

from __future__ import annotations

import ast
import codecs
import functools
import json
import os
import re
import sys
from typing import Iterable

from .errors import TokenizerError

WORLD_VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "rwkv_vocab_v20230424.txt")
END_OF_TEXT = 0  # id 0 ends a text in every RWKV model; vocabulary files do not list it
_FORMAT = "each line must be '<id> <python str or bytes literal> <byte length>'"
_TERMINAL = -1  # key under which a trie node stores the id of the token ending there
_CACHE_CHUNK, _CACHE_SIZE = 32, 1 << 15  # memoize chunks up to 32 bytes, at most 32768 of them


def parse_vocab(data: bytes | str, name: str = "<vocab>") -> dict[int, bytes]:
    """Parse a vocabulary in the World format into {id: token bytes}; CRLF or LF line ends."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            lineno = data.count(b"\n", 0, e.start) + 1
            raise TokenizerError(f"{name}:{lineno}: the vocabulary file is not valid UTF-8; {_FORMAT}") from None
    else:
        text = data
    if text.startswith("\ufeff"):
        text = text[1:]
    vocab: dict[int, bytes] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        a, b = line.find(" "), line.rfind(" ")
        lit = line[a + 1:b]
        q = lit[:1]
        # Fast path: '<id> <quoted str without escapes> <length>', all but ~1% of the World vocabulary.
        if 0 < a < b and (q == "'" or q == '"') and lit[-1] == q and "\\" not in lit and q not in lit[1:-1]:
            tok = lit[1:-1].encode("utf-8")
            try:
                idx, length = int(line[:a]), int(line[b + 1:])
            except ValueError:
                idx = length = -1
            if idx < 0 or idx in vocab or len(tok) != length or len(lit) < 2:
                idx, tok = _check_line(line, vocab, name, lineno)  # full checks; raises a precise error
            vocab[idx] = tok
        elif line.strip():
            idx, tok = _check_line(line, vocab, name, lineno)
            vocab[idx] = tok
    if not vocab:
        raise TokenizerError(f"{name}: the vocabulary is empty; {_FORMAT}")
    return vocab


def _check_line(line: str, vocab: dict[int, bytes], name: str, lineno: int) -> tuple[int, bytes]:
    """Parse one line with full checks, raising a TokenizerError that names the line."""
    line = line.rstrip()
    a, b = line.find(" "), line.rfind(" ")
    if a <= 0 or b <= a:
        raise TokenizerError(f"{name}:{lineno}: expected three fields in {line[:60]!r}; {_FORMAT}")
    try:
        idx, length = int(line[:a]), int(line[b + 1:])
    except ValueError:
        raise TokenizerError(f"{name}:{lineno}: the id and the byte length must be integers; {_FORMAT}") from None
    if idx < 0:
        raise TokenizerError(f"{name}:{lineno}: token id {idx} is negative; ids must be >= 0")
    if idx in vocab:
        raise TokenizerError(f"{name}:{lineno}: token id {idx} appears twice; each id must appear once")
    tok = _parse_literal(line[a + 1:b].strip(), name, lineno)
    if len(tok) != length:
        raise TokenizerError(f"{name}:{lineno}: the token is {len(tok)} bytes long but the line says {length}; "
                             "fix the literal or the byte length")
    return idx, tok


def _parse_literal(lit: str, name: str, lineno: int) -> bytes:
    try:
        value = ast.literal_eval(lit)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise TokenizerError(f"{name}:{lineno}: {lit[:60]!r} is not a python str or bytes literal; {_FORMAT}") from None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise TokenizerError(f"{name}:{lineno}: the literal holds a lone surrogate, which has no UTF-8 form") from None
    raise TokenizerError(f"{name}:{lineno}: the token is a {type(value).__name__}, not a str or bytes literal; {_FORMAT}")


def _chunk_pattern(tokens: list[bytes]) -> re.Pattern:
    """A regex cutting bytes into chunks, each starting where every segmentation must start a token.

    A token starts at byte p whenever no vocabulary token holds the pair (data[p-1], data[p]): a
    token starting earlier would contain that pair. Two cases are cheap to find with a regex:
    bytes that occur only at the start of tokens (`lead`), and a space whose previous byte never
    precedes a space inside a token (in the World vocabulary only whitespace does).
    """
    inner = set(b"".join(t[1:] for t in tokens))
    lead = bytes(b for b in range(256) if b not in inner)
    before_space = {t[k - 1] for t in tokens if b" " in t[1:] for k in range(1, len(t)) if t[k] == 32}

    def cls(bs) -> bytes:
        return b"".join(b"\\x%02x" % b for b in sorted(bs))

    if 32 in inner:
        spaces = b" *" if 32 in before_space else b" ?"
        run = b"[^ " + cls(lead) + b"]*"
        glue = b" +" if 32 in before_space else b" "
        others = before_space - {32}
        tail = b"(?:(?<=[" + cls(others) + b"])" + glue + run + b")*" if others else b""
        start = b"(?:[" + cls(lead) + b"]|" + spaces + b")" if lead else spaces
        return re.compile(start + run + tail)
    run = b"[^" + cls(lead) + b"]*"  # every space starts a token; it is one of the lead bytes
    return re.compile(b"(?:[" + cls(lead) + b"]|)" + run)


class Tokenizer:
    """World tokenizer: `encode` picks, at each position, the longest vocabulary token that matches."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        path = WORLD_VOCAB if path is None else os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise TokenizerError(f"cannot read the vocabulary file {path!r} ({e.strerror}); "
                                 "pass an existing vocabulary file in the World format") from None
        self._setup(parse_vocab(data, path), path)

    @classmethod
    def from_text(cls, data: bytes | str, name: str = "<vocab>") -> "Tokenizer":
        """Build a tokenizer from the contents of a vocabulary file (e.g. fetched over HTTP)."""
        tok = cls.__new__(cls)
        tok._setup(parse_vocab(data, name), name)
        return tok

    def _setup(self, vocab: dict[int, bytes], name: str) -> None:
        self.name = name
        self._id2tok = vocab
        # Same bytes under two ids: the later line wins when encoding.
        self._tok2id = {t: i for i, t in vocab.items() if t}
        self.vocab_size = max(vocab) + 1
        self.eos_id = END_OF_TEXT
        self._maxlen = max(map(len, vocab.values()))
        self._root: dict | None = None  # built on first encode, so decode-only use loads faster

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size})"

    def _prepare(self) -> None:
        # Trie: nested dicts keyed by byte value; a node that ends a token holds its id under _TERMINAL.
        root: dict = {}
        for tok, idx in self._tok2id.items():
            node = root
            for byte in tok:
                child = node.get(byte)
                if child is None:
                    child = node[byte] = {}
                node = child
            node[_TERMINAL] = idx
        self._chunks = _chunk_pattern(list(self._tok2id)).findall
        self._cache: dict[bytes, list[int]] = {}
        self._root = root

    def _walk(self, data: bytes) -> list[int]:
        """Greedy longest match by walking the trie from each token start."""
        root, maxlen, n, i = self._root, self._maxlen, len(data), 0
        out: list[int] = []
        append = out.append
        while i < n:
            node, j, end, best = root, i, i, 0
            for byte in data[i:i + maxlen]:
                if byte not in node:
                    break
                node = node[byte]
                j += 1
                if _TERMINAL in node:
                    best, end = node[_TERMINAL], j
            if end == i:
                raise TokenizerError(f"no token in the vocabulary {self.name!r} starts with byte 0x{data[i]:02x} "
                                     f"(at byte {i}); the vocabulary must hold every single byte it may meet")
            append(best)
            i = end
        return out

    def encode_bytes(self, data: bytes | bytearray | memoryview) -> list[int]:
        """Token ids for raw bytes: the longest vocabulary match at each position, left to right."""
        if self._root is None:
            self._prepare()
        cache, walk = self._cache, self._walk
        out: list[int] = []
        # Chunks start where a token must start, so each is encoded on its own; short ones are memoized.
        for chunk in self._chunks(bytes(data)):
            ids = cache.get(chunk)
            if ids is None:
                ids = walk(chunk)
                if len(chunk) <= _CACHE_CHUNK:
                    if len(cache) >= _CACHE_SIZE:
                        cache.clear()
                    cache[chunk] = ids
            out += ids
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids for a str (encoded as UTF-8)."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TokenizerError(f"the text holds a lone surrogate at index {e.start}, which has no UTF-8 form; "
                                 "pass well-formed text, or bytes to encode_bytes") from None
        return self.encode_bytes(data)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of the tokens, concatenated."""
        if not isinstance(ids, (list, tuple)):
            ids = list(ids)
        try:
            return b"".join(map(self._id2tok.__getitem__, ids))
        except (KeyError, TypeError):
            pass
        bad = next((i for i in ids if not _known(self._id2tok, i)), None)
        if bad == END_OF_TEXT:
            raise TokenizerError("id 0 is end-of-text and has no text; stop before decoding it")
        raise TokenizerError(f"token id {bad!r} is not in the vocabulary {self.name!r} (vocab_size {self.vocab_size}); "
                             "the model and the vocabulary may not match, pass the model's vocabulary file")

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the tokens; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, idx: int) -> bytes:
        """The bytes of one token."""
        return self.decode_bytes((idx,))

    def stream(self) -> "StreamDecoder":
        """A fresh StreamDecoder on this tokenizer."""
        return StreamDecoder(self)


def _known(vocab: dict[int, bytes], i: object) -> bool:
    try:
        return i in vocab
    except TypeError:
        return False


class StreamDecoder:
    """Decode tokens as they come, returning only complete UTF-8 characters; call flush() at the end."""

    def __init__(self, tokenizer: Tokenizer | None = None) -> None:
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: int | Iterable[int]) -> str:
        """Text completed by these ids (possibly empty while a character is still split)."""
        if not hasattr(ids, "__iter__"):  # one id (int or numpy integer)
            ids = (ids,)
        return self._utf8.decode(self.tokenizer.decode_bytes(ids))

    def flush(self) -> str:
        """The rest, with U+FFFD for a character left unfinished; the decoder starts afresh."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """The bundled World tokenizer (loaded once)."""
    return Tokenizer()


def load_tokenizer_for_model(model_path: str | os.PathLike | None, vocab: str | os.PathLike | None = None) -> Tokenizer:
    """`vocab` (a file or URL) if given, else `<model stem>.vocab.txt` next to the model (a local file
    or the same folder of a URL), else the World vocabulary."""
    from .model_card import beside, read_text

    if vocab is not None:
        return open_vocab(vocab)
    if model_path is not None:
        where = beside(os.fspath(model_path), ".vocab.txt")
        if where and "://" in where:
            text = read_text(where, "vocabulary")
            if text is not None:
                return Tokenizer.from_text(text, where)
        elif where and os.path.isfile(where):
            return Tokenizer(where)
    return default_tokenizer()


def open_vocab(vocab: str | os.PathLike) -> Tokenizer:
    """A vocabulary from a local file or an http(s) URL."""
    where = os.fspath(vocab)
    if "://" not in where:
        return Tokenizer(where)
    from .model_card import read_text

    text = read_text(where, "vocabulary")
    if text is None:
        raise TokenizerError(f"there is no vocabulary at {where} (not found); check the --vocab URL")
    return Tokenizer.from_text(text, where)


def _cli_tokenizer(args) -> Tokenizer:
    if getattr(args, "vocab", None):
        return open_vocab(args.vocab)
    if getattr(args, "model", None):
        return load_tokenizer_for_model(args.model)
    return default_tokenizer()


def tokenize_main(args) -> int:
    """`webrwkv tokenize [--vocab FILE | --model M] (TEXT | --file F)`: print the ids as a JSON list."""
    if (args.text is None) == (args.file is None):
        raise TokenizerError("give either TEXT or --file FILE (use --file - to read standard input)")
    if args.file is None:
        data = args.text.encode("utf-8", errors="surrogateescape")  # keeps undecodable argv bytes as they were
    elif args.file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise TokenizerError(f"cannot read {args.file!r} ({e.strerror}); pass an existing text file") from None
    print(json.dumps(_cli_tokenizer(args).encode_bytes(data)))
    return 0


def detokenize_main(args) -> int:
    """`webrwkv detokenize [--vocab FILE | --model M] IDS_JSON`: print the text of the ids."""
    try:
        ids = json.loads(args.ids)
    except ValueError:
        raise TokenizerError(f"{args.ids[:40]!r} is not JSON; pass a list of ids such as '[33155, 11]'") from None
    if isinstance(ids, int):
        ids = [ids]
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
        raise TokenizerError("IDS_JSON must be a JSON list of integers, such as '[33155, 11]'")
    data = _cli_tokenizer(args).decode(ids).encode("utf-8") + b"\n"
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        sys.stdout.write(data.decode("utf-8"))
    else:
        out.write(data)
        out.flush()
    return 0
