"""The generate, chat and batch commands, run as subprocesses on the reference backend with a tiny golden model.

Expected outputs come from greedy loops written here directly on webrwkv.reference.forward.
A vocabulary of one printable ASCII character (or newline) per token makes every text's tokens
unique, so a whole chat transcript can be replayed from scratch; ids past it are never drawn.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from webrwkv.models import load_weights
from webrwkv.reference import forward
from webrwkv.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "tests" / "golden" / "v7.st")
INFO, WEIGHTS = load_weights(MODEL)


CHARS = "\n" + "".join(map(chr, range(32, 127)))
N_IDS = len(CHARS) + 1  # id 0 is end-of-text; the golden model has 256 logits


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "ascii.vocab.txt"
    path.write_text("\n".join(f"{i + 1} {c.encode()!r} 1" for i, c in enumerate(CHARS)) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tok(vocab):
    return Tokenizer(vocab)


def cli(*args, stdin=None, vocab=None, ok=True, model=MODEL):
    cmd = [sys.executable, "-m", "webrwkv", *args, "--backend", "reference"] + (["--model", model] if model else [])
    if vocab:
        cmd += ["--vocab", vocab]
    env = {k: v for k, v in os.environ.items() if k != "WEBRWKV_MODEL"}
    env["PYTHONIOENCODING"] = "utf-8"
    p = subprocess.run(cmd, input=stdin.encode() if stdin is not None else b"", capture_output=True,
                       env=env, cwd=ROOT, timeout=300)
    if ok:
        assert p.returncode == 0, p.stderr.decode()
    return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8")


def greedy(ids, n, stops=(), ban_eos=False, tok=None, model=(INFO, WEIGHTS), n_ids=N_IDS):
    """Greedy ids straight from the reference forward pass, with the stop rules of the docs."""
    info, weights = model
    logits, state = forward(weights, info, ids)
    out = []
    for _ in range(n):
        x = logits.copy()
        x[n_ids:] = -np.inf
        if ban_eos:
            x[0] = -np.inf
        t = int(np.argmax(x))
        out.append(t)
        if t == 0:
            break
        if stops and any(s in tok.decode(out) for s in stops):
            break
        logits, state = forward(weights, info, [t], state)
    return out


def text_before_stop(text, stops):
    cut = min([text.find(s) for s in stops if s in text] or [len(text)])
    return text[:cut]


def test_generate_greedy_streams_reference_text(vocab, tok):
    ids = greedy(tok.encode("Hello"), 24)
    text = tok.decode([t for t in ids if t])
    _, out, err = cli("generate", "--prompt", "Hello", "--max-tokens", "24", "--temperature", "0", vocab=vocab)
    assert out == text + "\n"
    assert "prefill" in err and "tok/s" in err


def test_generate_json(vocab, tok):
    prompt = "Hello"
    ids = greedy(tok.encode(prompt), 16)
    _, out, _ = cli("generate", "--prompt", prompt, "--max-tokens", "16", "--temperature", "0", "--json",
                    vocab=vocab)
    lines = out.strip("\n").split("\n")
    assert len(lines) == 1  # nothing streamed: one JSON object
    res = json.loads(lines[0])
    assert res["prompt_ids"] == tok.encode(prompt) and res["ids"] == ids
    assert res["text"] == tok.decode([t for t in ids if t])
    assert res["prefill_tps"] > 0 and res["decode_tps"] > 0 and res["prompt_tokens"] == len(prompt)
    assert res["stop_reason"] in ("max_tokens", "eos")


def test_generate_stop_string(vocab, tok):
    ids = greedy(tok.encode("x"), 30)
    text = tok.decode([t for t in ids if t])
    stop = text[5:7]
    assert len(text) > 10 and text.find(stop) == 5
    _, out, _ = cli("generate", "--prompt", "x", "--max-tokens", "30", "--temperature", "0", "--json",
                    "--stop", stop, vocab=vocab)
    res = json.loads(out)
    assert res["text"] == text[: text.find(stop)] and res["stop"] == stop and res["stop_reason"] == "stop"
    assert tok.decode(res["ids"]).startswith(res["text"] + stop)


def test_generate_seeded_sampling(vocab):
    args = ("generate", "--prompt", "x", "--max-tokens", "20", "--temperature", "1.5", "--top-p", "1", "--json")
    a = json.loads(cli(*args, "--seed", "7", vocab=vocab)[1])["ids"]
    b = json.loads(cli(*args, "--seed", "7", vocab=vocab)[1])["ids"]
    c = json.loads(cli(*args, "--seed", "8", vocab=vocab)[1])["ids"]
    assert a == b and a != c


@pytest.mark.parametrize("args, words", [
    (("--max-tokens", "0"), "--max-tokens"),
    (("--top-p", "1.5"), "top_p"),
    (("--temperature", "-1"), "temperature"),
])
def test_generate_user_errors(vocab, args, words):
    code, out, err = cli("generate", "--prompt", "x", *args, vocab=vocab, ok=False)
    assert code == 2 and words in err and "Traceback" not in err


def test_vocabulary_must_fit_the_model(vocab):
    world = str(ROOT / "py" / "webrwkv" / "data" / "rwkv_vocab_v20230424.txt")
    for extra in (("--vocab", world), ()):  # given, or the default World vocabulary
        code, _, err = cli("generate", "--prompt", "x", *extra, ok=False)
        assert code == 2 and "vocabulary" in err and "Traceback" not in err


def chat_reply(transcript, tok, max_tokens=40, stops=("\n\n", "\nUser:")):
    ids = greedy(tok.encode(transcript), max_tokens, stops, ban_eos=True, tok=tok)
    return text_before_stop(tok.decode(ids), stops)


def test_chat_piped_regenerate_reset(vocab, tok):
    r1 = chat_reply("User: Hello\n\nAssistant:", tok)
    r2 = chat_reply(f"User: Hello\n\nAssistant:{r1}\n\nUser: And you?\n\nAssistant:", tok)
    stdin = "+\nHello\n+\nAnd you?\n/reset\nHello\n/quit\nnever read\n"
    _, out, err = cli("chat", "--temperature", "0", "--max-tokens", "40", stdin=stdin, vocab=vocab)
    assert out == "".join(f"Assistant:{r}\n\n" for r in (r1, r1, r2, r1))
    assert "no reply to regenerate" in err and "starts over" in err


def test_chat_prompt_file(vocab, tok):
    cfg = json.loads((ROOT / "prompts" / "generic.json").read_text(encoding="utf-8"))
    prelude = cfg["intro"] + "\n\n" + "".join(f"User: {u}\n\nAssistant: {b}\n\n" for u, b in cfg["turns"])
    r = chat_reply(prelude + "User: Hi\n\nAssistant:", tok, max_tokens=12)
    _, out, _ = cli("chat", "--temperature", "0", "--max-tokens", "12", "--prompt-file",
                    str(ROOT / "prompts" / "generic.json"), stdin="Hi\n", vocab=vocab)
    assert out == f"Assistant:{r}\n\n"


def test_chat_play_format_prompt_file(vocab, tok):
    path = ROOT / "prompts" / "shakespeare.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    prelude = cfg["intro"] + "\n\n" + "".join(f"  Rom. {u}\n  Jul. {b}\n" for u, b in cfg["turns"])
    stops = ("\n", "\n  Rom.", "\n\n")
    r = chat_reply(prelude + "  Rom. Speak again.\n  Jul.", tok, max_tokens=12, stops=stops)
    _, out, _ = cli("chat", "--temperature", "0", "--max-tokens", "12", "--prompt-file", str(path),
                    stdin="Speak again.\n", vocab=vocab)
    assert out == f"Jul.{r}\n\n"


def test_chat_bundled_model_uses_its_play_prompt():
    from webrwkv.models import default_model_path
    from webrwkv.tokenizer import load_tokenizer_for_model
    path = default_model_path()
    tok = load_tokenizer_for_model(path)
    cfg = json.loads((ROOT / "prompts" / "shakespeare.json").read_text(encoding="utf-8"))
    prelude = cfg["intro"] + "\n\n" + "".join(f"  Rom. {u}\n  Jul. {b}\n" for u, b in cfg["turns"])
    stops = ("\n", "\n  Rom.", "\n\n")
    ids = greedy(tok.encode(prelude + "  Rom. Good morrow.\n  Jul."), 16, stops, ban_eos=True, tok=tok,
                 model=load_weights(path), n_ids=tok.vocab_size)
    reply = text_before_stop(tok.decode(ids), stops)
    assert len(reply.strip()) > 3
    _, out, _ = cli("chat", "--temperature", "0", "--max-tokens", "16", stdin="Good morrow.\n", model=None)
    assert out == f"Jul.{reply}\n\n"


def test_chat_bad_prompt_file(vocab, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"user": "A", "turns": [["only one"]]}')
    code, _, err = cli("chat", "--prompt-file", str(bad), stdin="hi\n", vocab=vocab, ok=False)
    assert code == 2 and "turns" in err
    code, _, err = cli("chat", "--prompt-file", str(tmp_path / "missing.json"), stdin="", vocab=vocab, ok=False)
    assert code == 2 and "prompt file" in err
    from webrwkv.chat import load_prompt_file
    from webrwkv.errors import WebRwkvError
    for text, words in (('{"stop": "x"}', "'stop'"), ('{"user": 5}', "strings"), ('{"colour": 1}', "unknown"),
                        ('[1]', "unknown"), ('{"turns": [["a", 2]]}', "turns"), ("{", "not valid JSON")):
        bad.write_text(text)
        with pytest.raises(WebRwkvError, match=words):
            load_prompt_file(str(bad))


def test_read_prompts(tmp_path):
    from webrwkv.chat import read_prompts
    from webrwkv.errors import WebRwkvError
    f = tmp_path / "p.txt"
    f.write_text("first\r\n\n  \nUser: hi\\n\\nAssistant:\n", encoding="utf-8")
    assert read_prompts(str(f)) == ["first", "User: hi\n\nAssistant:"]
    f.write_text("\n \n", encoding="utf-8")
    with pytest.raises(WebRwkvError, match="no prompts"):
        read_prompts(str(f))


def test_batch_slots_match_solo_runs(vocab, tok, tmp_path):
    prompts = ["Once upon a time, in a land far away", "Hi", "To be or not"]
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    _, out, err = cli("batch", "--prompts", str(f), "--temperature", "0", "--max-tokens", "10",
                      "--token-chunk-size", "7", vocab=vocab)
    lines = {s: [] for s in range(3)}
    for line in out.split("\n")[:-1]:
        slot, _, rest = line.partition("] ")
        lines[int(slot[1:])].append(rest)
    for s, p in enumerate(prompts):
        text = tok.decode([t for t in greedy(tok.encode(p), 10) if t])
        assert "\n".join(lines[s]) == text.rstrip("\n")
    assert "tok/s" in err and "batch of 3" in err
