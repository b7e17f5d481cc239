"""`serve --api` through the official `openai` client: a server on a free port with the tiny v7 golden model
(and a vocabulary written next to it) gives the tokens generate_stream / ChatSession give for the same seed and
parameters, alone and with several clients at once; stop strings, max_tokens, errors, a client that goes away."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
from gpu_util import GOLDEN, device, state_rel

from webrwkv.api import ApiServer, prefer_gemv
from webrwkv.api_schema import Limits
from webrwkv.chat_session import ChatFormat, ChatSession
from webrwkv.engine import load_engine
from webrwkv.generation import generate_stream, iterate_sync
from webrwkv.sampling import SamplerParams
from webrwkv.scheduler import Scheduler

SLOTS = 3
FMT = ChatFormat()
SAMPLED = dict(temperature=0.9, top_p=0.9, top_k=40, min_p=0.02, presence_penalty=0.4, frequency_penalty=0.3)


def api(**kw):
    """Request arguments for the openai client: webrwkv's own sampling fields go in extra_body."""
    extra = {k: kw.pop(k) for k in ("top_k", "min_p", "penalty_decay") if k in kw}
    return {**kw, "extra_body": extra} if extra else kw


def vocab_text() -> str:
    """ids 1..96: newline and the printable ASCII characters; 97..255: two-letter pairs: every output is text."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["\n"] + [chr(c) for c in range(32, 127)] + [letters[j // 26] + letters[j % 26] for j in range(159)]
    return "".join(f"{i} {w!r} {len(w)}\n" for i, w in enumerate(words, 1))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    device()
    d = tmp_path_factory.mktemp("api")
    (d / "tiny.st").write_bytes((GOLDEN / "v7.st").read_bytes())
    (d / "tiny.vocab.txt").write_text(vocab_text())
    eng = load_engine(d / "tiny.st", "native", max_batch=SLOTS, token_chunk_size=16, device=device())
    ref = load_engine(d / "tiny.st", "native", max_batch=1, token_chunk_size=16, device=device())
    for e in (eng, ref):  # the server's tuning on both (GEMV up to SLOTS tokens: each slot as if alone)
        prefer_gemv(e.runtime, SLOTS)
    assert eng.runtime.k.tuning.gemv_max_t >= SLOTS  # every decode step of the slots runs the GEMV
    sch = Scheduler(eng.runtime, eng.tokenizer, max_queue=8).start()
    srv = ApiServer(sch, eng.tokenizer, "tiny", FMT, Limits(SamplerParams(), 16, 400, 256, ()), port=0,
                    max_request_bytes=64 << 10).start()
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    yield dict(srv=srv, sch=sch, rt=eng.runtime, ref=ref.runtime, tok=eng.tokenizer, client=client)
    srv.stop()


def solo(env, prompt: str, max_tokens: int, stop=(), **kw):
    """What generate_stream gives for the prompt alone on a fresh slot 0 (the server's random stream)."""
    rt, tok = env["ref"], env["tok"]
    rt.reset(0)
    ids = tok.encode(prompt) or [0]
    return list(generate_stream(rt, tok, ids, SamplerParams(**kw), max_tokens, list(stop)))[-1]


def solo_chat(env, messages, max_tokens: int, **kw):
    rt, tok = env["ref"], env["tok"]
    chat = ChatSession(rt, tok, SamplerParams(**kw), FMT, max_tokens=max_tokens)
    items = list(iterate_sync(chat.respond_async(messages)))
    return "".join(p for _, p in items[:-1]).lstrip(), items[-1]


def wait_idle(sch, timeout=60.0):
    t = time.monotonic()
    while sch.status()["busy"] or sch.status()["waiting"]:
        assert time.monotonic() - t < timeout, sch.status()
        time.sleep(0.05)


def test_completions_equal_generate_stream(env):
    c = env["client"]
    prompt = "The quick brown fox jumps over"
    want = solo(env, prompt, 24, seed=11, **SAMPLED)
    r = c.completions.create(model="tiny", prompt=prompt, max_tokens=24, **api(seed=11, **SAMPLED))
    assert r.choices[0].text == want.text and r.object == "text_completion"
    assert r.usage.prompt_tokens == want.prompt_tokens and r.usage.completion_tokens == len(want.ids)
    assert r.choices[0].finish_reason == ("length" if want.stop_reason == "max_tokens" else "stop")
    chunks = list(c.completions.create(model="tiny", prompt=prompt, max_tokens=24, stream=True,
                                       stream_options={"include_usage": True}, **api(seed=11, **SAMPLED)))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == want.text
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].text]) > 1  # streamed, not one lump
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.ids)
    assert chunks[-2].choices[0].finish_reason == r.choices[0].finish_reason
    # token ids in, greedy
    ids = env["tok"].encode("Once upon a time")
    want = solo(env, "Once upon a time", 12, temperature=0)
    r = c.completions.create(model="tiny", prompt=ids, max_tokens=12, temperature=0)
    assert r.choices[0].text == want.text


def test_chat_equals_chat_session(env):
    c = env["client"]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "What now?"}]
    text, st = solo_chat(env, msgs, 20, seed=3, **SAMPLED)
    r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=20, **api(seed=3, **SAMPLED))
    assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == st.prompt_tokens and r.usage.completion_tokens == len(st.ids)
    chunks = list(c.chat.completions.create(model="tiny", messages=msgs, max_tokens=20, stream=True,
                                            **api(seed=3, **SAMPLED)))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    assert len({ch.id for ch in chunks}) == 1


def test_concurrent_clients_get_their_solo_answers(env):
    """More clients than slots (some wait in the queue); prompts of 1 to 40 tokens, prefilled in chunks of 16
    between the windows of the others; each answer is the one it gets alone."""
    jobs = [("A", dict(seed=1, **SAMPLED), 30), ("Tell me a story about a fox and a very long road " * 1, dict(
        seed=2, temperature=0.7, top_p=0.8), 20), ("xyz", dict(temperature=0), 25),
            ("Quiet", dict(seed=4, temperature=1.2, top_k=5), 9), ("Twelve tokens in a row!", dict(seed=5), 33)]
    want = [solo(env, p, n, **kw).text for p, kw, n in jobs]
    got: dict[int, str] = {}

    def client(i):
        p, kw, n = jobs[i]
        c = openai.OpenAI(base_url=env["srv"].url + "/v1", api_key="unused", max_retries=0, timeout=120)
        if i % 2:
            got[i] = c.completions.create(model="tiny", prompt=p, max_tokens=n, **api(**kw)).choices[0].text
        else:
            got[i] = "".join(ch.choices[0].text for ch in c.completions.create(
                model="tiny", prompt=p, max_tokens=n, stream=True, **api(**kw)))

    served = env["sch"].status()["served"]
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert [got.get(i) for i in range(len(jobs))] == want
    assert env["sch"].status()["served"] == served + len(jobs)


def test_stop_string_and_max_tokens(env):
    c = env["client"]
    full = solo(env, "Stop here", 40, temperature=0).text
    stop = full[12:15]
    k = full.find(stop)
    want = solo(env, "Stop here", 40, [stop], temperature=0)
    assert want.stop_reason == "stop" and want.text == full[:k]
    r = c.completions.create(model="tiny", prompt="Stop here", max_tokens=40, temperature=0, stop=stop)
    assert r.choices[0].text == full[:k] and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == len(want.ids)
    chunks = list(c.completions.create(model="tiny", prompt="Stop here", max_tokens=40, temperature=0,
                                       stop=[stop, "never"], stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == full[:k] and chunks[-1].choices[0].finish_reason == "stop"
    r = c.completions.create(model="tiny", prompt="Stop here", max_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    assert r.choices[0].text == solo(env, "Stop here", 5, temperature=0).text
    r = c.completions.create(model="tiny", prompt="Stop here", temperature=0)  # the server's default: 16
    assert r.usage.completion_tokens == 16


def test_bad_requests_get_openai_errors(env):
    c = env["client"]
    cases = [dict(temperature=5), dict(n=2), dict(max_tokens=0), dict(max_tokens=401), dict(top_p=1.5),
             dict(extra_body={"temprature": 1}), dict(seed=-1), dict(stop=["a"] * 17), dict(logprobs=True),
             dict(logit_bias={"3": 5}), dict(presence_penalty="a")]
    for kw in cases:
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="tiny", prompt="hi", **kw)
        assert e.value.status_code == 400 and e.value.body["message"], kw
    with pytest.raises(openai.BadRequestError, match="temprature"):
        c.completions.create(model="tiny", prompt="hi", extra_body={"temprature": 1})
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        c.completions.create(model="tiny", prompt=[1, 2, 999])
    with pytest.raises(openai.BadRequestError, match="at most 256"):
        c.completions.create(model="tiny", prompt="ab" * 300)
    for msgs in ([], [{"role": "assistant", "content": "x"}], [{"role": "user", "content": "  "}],
                 [{"role": "robot", "content": "x"}]):
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="tiny", messages=msgs)
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4")
    assert [m.id for m in c.models.list()] == ["tiny"]

    def raw(path, data: bytes, method="POST"):
        req = urllib.request.Request(env["srv"].url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    status, headers, body = raw("/v1/completions", b"{not json")
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]["message"]
    assert headers["Access-Control-Allow-Origin"] == "*"
    status, _, body = raw("/v1/completions", json.dumps({"prompt": "x" * (70 << 10)}).encode())
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    status, _, body = raw("/v1/completions", None, "GET")
    assert status == 405 and json.loads(body)["error"]["type"] == "invalid_request_error"
    status, headers, _ = raw("/v1/chat/completions", None, "OPTIONS")
    assert status == 204 and "POST" in headers["Access-Control-Allow-Methods"]


def test_full_queue_is_503_and_api_key(env):
    busy = Scheduler(env["rt"], env["tok"], max_queue=0)  # never started: every request finds the queue full
    srv = ApiServer(busy, env["tok"], "tiny", port=0, api_key="sesame").start()
    try:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="sesame", max_retries=0)
        with pytest.raises(openai.InternalServerError) as e:
            c.completions.create(model="tiny", prompt="hi")
        assert e.value.status_code == 503 and e.value.body["code"] == "queue_full"
        assert e.value.response.headers["Retry-After"] == "1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        srv.stop()


def test_disconnect_frees_the_slot_rolled_back(env):
    """A client that closes a long stream: its slot is freed within seconds (not after 400 tokens) and holds
    the state of step-by-step decoding after the prompt and every token sent but the last."""
    c, sch, tok = env["client"], env["sch"], env["tok"]
    wait_idle(sch)
    generated = sch.status()["generated_tokens"]
    prompt = "A stream nobody reads to the end"
    stream = c.completions.create(model="tiny", prompt=prompt, max_tokens=400, stream=True,
                                  **api(seed=9, **SAMPLED))
    seen = [ch.choices[0].text for _, ch in zip(range(3), stream)]
    stream.close()
    wait_idle(sch, 30)
    sent = sch.status()["generated_tokens"] - generated
    assert 3 <= sent < 400
    ids = tok.encode(prompt)
    (slot, read), = [(s, r) for s, r in sch.free_slots().items() if r[: len(ids)] == ids]
    assert len(read) == len(ids) + sent - 1
    want = solo(env, prompt, sent, seed=9, **SAMPLED)
    assert read == (ids + want.ids)[:-1] and want.text.startswith("".join(seen))
    assert state_rel(env["rt"].get_state(slot), env["ref"].get_state(0)) == 0.0


def test_a_prompt_that_continues_a_slot_reads_only_the_rest(env):
    c, tok = env["client"], env["tok"]
    wait_idle(env["sch"])
    first = c.completions.create(model="tiny", prompt="Remember this:", max_tokens=6, temperature=0)
    follow = "Remember this:" + first.choices[0].text + " and this"
    r = c.completions.create(model="tiny", prompt=follow, max_tokens=10, temperature=0)
    cached = r.usage.prompt_tokens_details.cached_tokens
    assert cached >= len(tok.encode("Remember this:")) and r.usage.prompt_tokens == len(tok.encode(follow))
    assert r.choices[0].text == solo(env, follow, 10, temperature=0).text


def test_scheduler_on_the_numpy_reference():
    """Without a GPU decoder the scheduler samples in numpy: two slots, three jobs, each as generate_stream."""
    from webrwkv.reference import ReferenceRuntime
    from webrwkv.scheduler import Job
    from webrwkv.tokenizer import Tokenizer

    tok = Tokenizer.from_text(vocab_text())
    rt, ref = ReferenceRuntime(GOLDEN / "v7.st", max_batch=2), ReferenceRuntime(GOLDEN / "v7.st", max_batch=1)
    jobs = [(tok.encode(p), SamplerParams(seed=i, **SAMPLED), 8 + i) for i, p in enumerate(["ab", "The cat", "q"])]
    done, events = {}, []
    sch = Scheduler(rt, tok).start()
    for i, (ids, params, n) in enumerate(jobs):
        ev = threading.Event()
        events.append(ev)
        sch.submit(Job(ids, params, n, emit=lambda p, st, err, i=i, ev=ev: (st or err) and (done.setdefault(i, st or err), ev.set())))
    for ev in events:
        assert ev.wait(120)
    sch.close()
    for i, (ids, params, n) in enumerate(jobs):
        ref.reset(0)
        assert done[i].ids == list(generate_stream(ref, tok, ids, params, n))[-1].ids, i


def test_serve_help_says_the_limits_and_api_dispatches(capsys):
    from webrwkv.cli import build_parser, main

    text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    for flag in ("--api", "--slots", "--max-queue", "--max-tokens-limit", "--max-prompt-tokens", "--max-request-bytes"):
        assert flag in text, flag
    assert main(["serve", "--api", "--slots", "0"]) == 2  # reaches the API's checks, before any model loads
    assert "--slots must be at least 1" in capsys.readouterr().err


def test_an_engine_error_reaches_the_client_and_the_server_goes_on(env, monkeypatch):
    """NaN logits (SamplingError from a window's read): a 500 error object, or an error event in a stream that
    the openai client raises; the slots are reset and the next request is served as before."""
    from webrwkv.errors import SamplingError

    c, dec = env["client"], env["rt"].decoder
    wait_idle(env["sch"])

    def nan(w):
        raise SamplingError("the logits hold NaN or infinity")

    monkeypatch.setattr(dec, "read", nan)
    with pytest.raises(openai.InternalServerError, match="NaN"):
        c.completions.create(model="tiny", prompt="hi", max_tokens=4)
    read, calls = type(dec).read, []

    def nan_later(w):  # the first window's tokens go out, then the error comes as an event of the stream
        calls.append(w)
        return read(dec, w) if len(calls) == 1 else nan(w)

    monkeypatch.setattr(dec, "read", nan_later)
    chunks = []
    with pytest.raises(openai.APIError, match="NaN"):
        for ch in c.completions.create(model="tiny", prompt="hi", max_tokens=50, stream=True, temperature=0):
            chunks.append(ch)
    assert chunks and chunks[0].choices[0].text  # the error came after the stream had started
    monkeypatch.undo()
    r = c.completions.create(model="tiny", prompt="hi", max_tokens=7, temperature=0)
    assert r.choices[0].text == solo(env, "hi", 7, temperature=0).text


def test_an_unexpected_engine_failure_is_an_openai_error(env, monkeypatch):
    """Not a WebRwkvError (a bug, a driver's exception): still an OpenAI error object that names it, before the
    headers as a 500 answer, after them as an error event; the slot is freed and the server goes on."""
    c, dec, sch = env["client"], env["rt"].decoder, env["sch"]
    wait_idle(sch)
    read, calls = type(dec).read, []

    def boom(w):
        raise RuntimeError("boom in the driver")

    monkeypatch.setattr(dec, "read", boom)
    with pytest.raises(openai.InternalServerError) as e:
        c.completions.create(model="tiny", prompt="hi", max_tokens=4)
    assert e.value.body["code"] == "engine_error" and "boom in the driver" in e.value.body["message"]

    def boom_later(w):
        calls.append(w)
        return read(dec, w) if len(calls) == 1 else boom(w)

    monkeypatch.setattr(dec, "read", boom_later)
    chunks = []
    with pytest.raises(openai.APIError, match="boom in the driver"):
        for ch in c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=50, stream=True, temperature=0):
            chunks.append(ch)
    assert chunks and chunks[0].choices[0].delta.role == "assistant"
    monkeypatch.undo()
    wait_idle(sch, 30)
    assert sch.status()["error"] is None and len(sch.free_slots()) == SLOTS
    r = c.completions.create(model="tiny", prompt="hi", max_tokens=7, temperature=0)
    assert r.choices[0].text == solo(env, "hi", 7, temperature=0).text


def test_the_serve_api_command_serves_and_stops_on_ctrl_c(env, tmp_path):
    """`webrwkv serve --api` as a process: its flags reach the server (model name, default max_tokens, the API key
    from the environment, the chat format of --prompt-file), its greedy text is generate_stream's, Ctrl-C ends it."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    d = tmp_path / "m"
    d.mkdir()
    (d / "tiny.st").write_bytes((GOLDEN / "v7.st").read_bytes())
    (d / "tiny.vocab.txt").write_text(vocab_text())
    (d / "fmt.json").write_text(json.dumps({"user": "Q", "bot": "A", "stop": ["\nQ:"]}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "webrwkv.cli", "serve", "--api", "--model", str(d / "tiny.st"), "--port", str(port),
           "--slots", "2", "--max-tokens", "5", "--model-name", "mine", "--prompt-file", str(d / "fmt.json"),
           "--token-chunk-size", "16"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "WEBRWKV_API_KEY": "k1"})
    try:
        line = proc.stderr.readline()
        assert f"127.0.0.1:{port}/v1" in line and "model 'mine', 2 slots" in line, line
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k1", max_retries=0, timeout=120)
        assert [m.id for m in c.models.list()] == ["mine"]
        r = c.completions.create(model="mine", prompt="Once upon a time", temperature=0)
        assert r.usage.completion_tokens == 5 and r.choices[0].text == solo(env, "Once upon a time", 5,
                                                                             temperature=0).text
        msgs = [{"role": "user", "content": "Hello there"}]
        r = c.chat.completions.create(model="mine", messages=msgs, max_tokens=12, temperature=0)
        want, st = solo_chat_in(env, ChatFormat(user="Q", bot="A"), msgs, 12, ["\nQ:"], temperature=0)
        assert r.choices[0].message.content == want and r.usage.prompt_tokens == st.prompt_tokens
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k2", max_retries=0).models.list()
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    assert rc == 130, proc.stderr.read()


def solo_chat_in(env, fmt, messages, max_tokens: int, stop, **kw):
    chat = ChatSession(env["ref"], env["tok"], SamplerParams(**kw), fmt, max_tokens=max_tokens, stop=list(stop))
    items = list(iterate_sync(chat.respond_async(messages)))
    return "".join(p for _, p in items[:-1]).lstrip(), items[-1]


def test_serve_api_state_file_is_every_slots_start(tmp_path):
    """`serve --api --state FILE`: greedy completions continue from the tuned state, as the reference does
    from that state (the official package's v6 state golden), and differ from the untuned model's."""
    import signal
    import socket
    import subprocess
    import sys

    import numpy as np

    from webrwkv import reference as ref
    from webrwkv.models import load_weights
    from webrwkv.models.states import read_state

    model, state = str(GOLDEN / "v6-converted.st"), str(GOLDEN / "v6-state.st")
    chars = "".join(map(chr, range(32, 127)))  # one token per printable character (id 1 + its index)
    vocab = tmp_path / "ascii.vocab.txt"
    vocab.write_text("".join(f"{i + 1} {c.encode()!r} 1\n" for i, c in enumerate(chars)), encoding="utf-8")
    info, w = load_weights(model)

    def greedy(start) -> str:
        logits, st = ref.forward(w, info, [1 + chars.index("H")], start)
        out = ""
        for _ in range(6):
            logits[1 + len(chars):] = -np.inf  # ids past the vocabulary are never drawn
            i = int(np.argmax(logits))
            out += chars[i - 1]
            logits, st = ref.forward(w, info, [i], st)
        return out

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "webrwkv.cli", "serve", "--api", "--backend", "reference", "--model", model,
           "--vocab", str(vocab), "--state", state, "--port", str(port), "--slots", "2", "--token-chunk-size", "16"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert f"127.0.0.1:{port}/v1" in line, line
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        texts = [c.completions.create(model="x", prompt="H", max_tokens=6, temperature=0).choices[0].text
                 for _ in range(2)]  # the second request starts from the tuned state again
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    tuned = greedy(read_state(state, info))
    assert texts == [tuned, tuned] and tuned != greedy(None)
