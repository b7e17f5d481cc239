"""The generation loop: streaming, stops, chunked prefill, batch slots and chat state, on the numpy reference."""

import asyncio
from pathlib import Path

import numpy as np
import pytest

from webrwkv.errors import WebRwkvError
from webrwkv.chat_session import ChatFormat, ChatSession
from webrwkv.batch import BatchStats, generate_batch
from webrwkv.generation import GenerationStats, generate_stream, generate_stream_async
from webrwkv.models import load_weights
from webrwkv.sampling import Sampler, SamplerParams
from webrwkv.tokenizer import Tokenizer

GREEDY = SamplerParams(temperature=0.0)


def byte_tokenizer() -> Tokenizer:
    """One token per byte: id = byte + 1 (id 0 stays end-of-text)."""
    return Tokenizer.from_text("\n".join(f"{b + 1} {bytes([b])!r} 1" for b in range(256)), "bytes")


TOK = byte_tokenizer()


def ids_of(text):
    return TOK.encode(text)


class ScriptedRuntime:
    """The runtime API (push/run/state per slot, token_chunk_size) over a scripted 'model'.

    Its state is the list of tokens a slot has consumed; its logits put a large value on the
    token `script(bytes so far)` returns. Only for the loop mechanics: the numbers are tested
    against the numpy reference below.
    """

    def __init__(self, script, max_batch=1, token_chunk_size=4, vocab=257):
        self.script, self.chunk, self.vocab = script, token_chunk_size, vocab
        self.token_chunk_size = token_chunk_size
        self.queue = {s: [] for s in range(max_batch)}
        self.seen = {s: [] for s in range(max_batch)}
        self.runs = 0

    def push(self, slot, tokens):
        self.queue[slot].extend(int(t) for t in tokens)

    decoder = None  # tokens are picked on the CPU

    def pending(self, slot):
        return len(self.queue[slot])

    def run(self, all_logits=False, outputs=True):
        self.runs += 1
        budget, out = self.chunk, {}
        for s, q in self.queue.items():
            if not q or budget == 0:
                continue
            take = min(len(q), budget)
            self.seen[s] += q[:take]
            del q[:take]
            budget -= take
            if not q and outputs:
                logits = np.zeros(self.vocab, dtype=np.float32)
                logits[self.script(TOK.decode_bytes([t for t in self.seen[s] if t]))] = 10.0
                out[s] = logits
        return out if outputs else {}

    async def run_async(self, all_logits=False, outputs=True):
        return self.run(all_logits, outputs)

    def get_state(self, slot):
        return {"tokens": np.array(self.seen[slot], dtype=np.int64)}

    async def get_state_async(self, slot):
        return self.get_state(slot)

    def set_state(self, slot, state):
        self.seen[slot] = [int(t) for t in state["tokens"]]

    def reset(self, slot):
        self.seen[slot], self.queue[slot] = [], []

    def text(self, slot=0):
        """What the slot has read so far."""
        return TOK.decode(self.seen[slot])


def recite(after, words):
    """A script that, after the prompt `after`, spells out `words` (then end-of-text)."""
    after, words = after.encode(), words.encode()

    def script(data):
        done = data[data.rindex(after) + len(after):]
        return words[len(done)] + 1 if len(done) < len(words) else 0
    return script


def collect(stream):
    items = list(stream)
    assert isinstance(items[-1], GenerationStats)
    assert all(isinstance(i, tuple) for i in items[:-1])
    return items[:-1], items[-1]


def test_stream_stops_before_stop_string_and_consumes_all_but_last():
    rt = ScriptedRuntime(recite("Q:", " one two\n\nthree"), token_chunk_size=2)
    prompt = ids_of("Q:")
    pieces, st = collect(generate_stream(rt, TOK, prompt, GREEDY, 50, stop=["\n\n"]))
    assert "".join(p for _, p in pieces) == st.text == " one two"
    assert st.ids == [t for t, _ in pieces] == ids_of(" one two\n\n")
    assert (st.stop_reason, st.stop, st.prompt_tokens) == ("stop", "\n\n", 2)
    assert rt.seen[0] == prompt + st.ids[:-1]
    assert pieces[-2][1] == "" and pieces[-1][1] == ""  # the "\n" held back, then the stop
    assert st.prefill_s > 0 and st.decode_s > 0 and st.decode_tps > 0 and st.prefill_tps > 0


def test_max_tokens_flushes_held_text():
    rt = ScriptedRuntime(recite(">", "ab\nUs and more"))
    pieces, st = collect(generate_stream(rt, TOK, ids_of(">"), GREEDY, 5, stop=["\nUser:"]))
    assert [p for _, p in pieces] == ["a", "b", "", "", "\nUs"]
    assert (st.text, st.stop_reason, len(st.ids)) == ("ab\nUs", "max_tokens", 5)


def test_end_of_text_stops():
    rt = ScriptedRuntime(recite(">", "hi"))
    _, st = collect(generate_stream(rt, TOK, ids_of(">"), GREEDY, 10))
    assert (st.text, st.stop_reason, st.ids) == ("hi", "eos", ids_of("hi") + [0])


def test_utf8_split_across_tokens():
    rt = ScriptedRuntime(recite(">", "é!"))
    pieces, st = collect(generate_stream(rt, TOK, ids_of(">"), GREEDY, 3))
    assert [p for _, p in pieces] == ["", "é", "!"] and st.text == "é!"


def test_chunked_prefill_run_count():
    rt = ScriptedRuntime(recite("]", "xyz"), token_chunk_size=4)
    prompt = ids_of("0123456789]")  # 11 tokens: 3 runs of at most 4
    _, st = collect(generate_stream(rt, TOK, prompt, GREEDY, 3))
    # 10 prompt tokens in 3 runs, the last one as the first decode step, then one run per token but the last
    assert st.text == "xyz" and rt.runs == 3 + 1 + 2
    with pytest.raises(WebRwkvError):
        list(generate_stream(rt, TOK, [], GREEDY, 3))


def test_async_matches_sync():
    async def go():
        rt = ScriptedRuntime(recite(":", " abc\n\n"))
        return [i async for i in generate_stream_async(rt, TOK, ids_of("x:"), GREEDY, 20, ["\n\n"])]
    items = asyncio.run(go())
    rt = ScriptedRuntime(recite(":", " abc\n\n"))
    sync = list(generate_stream(rt, TOK, ids_of("x:"), GREEDY, 20, ["\n\n"]))
    assert items[:-1] == sync[:-1] and items[-1].ids == sync[-1].ids and items[-1].text == " abc"


def test_batch_slots_equal_single_runs():
    def script(data):  # each slot answers with its own prompt reversed
        head, _, done = data.decode().partition("=")
        return ids_of(head[::-1][len(done)])[0] if len(done) < len(head) else 0
    prompts = [ids_of(p) for p in ("abcdefghijk=", "xy=", "Hello, slot two=")]
    rt = ScriptedRuntime(script, max_batch=3, token_chunk_size=5)
    items = list(generate_batch(rt, TOK, prompts, GREEDY, max_tokens=8))
    stats = items[-1]
    assert isinstance(stats, BatchStats)
    streamed = {s: "" for s in range(3)}
    for s, _, piece in items[:-1]:
        streamed[s] += piece
    for s, p in enumerate(prompts):
        alone = ScriptedRuntime(script, token_chunk_size=5)
        _, st = collect(generate_stream(alone, TOK, p, GREEDY, 8))
        assert stats.slots[s].ids == st.ids and streamed[s] == st.text == stats.slots[s].text
        assert rt.seen[s] == alone.seen[0]
    assert stats.generated_tokens == 8 + 3 + 8 and stats.prompt_tokens == sum(map(len, prompts))
    assert stats.tps > stats.generated_tps > 0


def echo_bot(data):
    """Replies ' You said <last user message>.' then a blank line."""
    text = data.decode()
    user = text[text.rindex("User: ") + 6: text.rindex("\n\nAssistant:")]
    done = text[text.rindex("Assistant:") + 10:]
    want = f" You said {user}.\n\nUser: ignored"
    return ids_of(want[len(done)])[0]


def test_chat_session_transcript_regenerate_reset():
    rt = ScriptedRuntime(echo_bot, token_chunk_size=16)
    chat = ChatSession(rt, TOK, GREEDY, intro="A chat.", turns=[("hi", "Hello.")], max_tokens=40)
    assert chat.prelude == "A chat.\n\nUser: hi\n\nAssistant: Hello.\n\n"
    _, st = collect(chat.reply("ping \n\n pong"))
    assert st.text == " You said ping\npong." and chat.history == [("ping\npong", "You said ping\npong.")]
    assert rt.text() == chat.prelude + "User: ping\npong\n\nAssistant: You said ping\npong.\n"
    _, st2 = collect(chat.regenerate())
    assert st2.ids == st.ids and len(chat.history) == 1
    assert rt.text() == chat.prelude + "User: ping\npong\n\nAssistant: You said ping\npong.\n"
    _, st3 = collect(chat.reply("again"))
    assert st3.text == " You said again."
    assert rt.text() == (chat.prelude + "User: ping\npong\n\nAssistant: You said ping\npong.\n\n"
                         "User: again\n\nAssistant: You said again.\n")
    chat.reset()
    assert rt.text() == "" and chat.history == []
    with pytest.raises(WebRwkvError):
        chat.regenerate()
    with pytest.raises(WebRwkvError):
        chat.reply("  \n ")


def test_chat_closed_early_keeps_shown_text():
    rt = ScriptedRuntime(echo_bot, token_chunk_size=16)
    chat = ChatSession(rt, TOK, GREEDY, max_tokens=40)
    stream = chat.reply("ping")
    shown = "".join(next(stream)[1] for _ in range(4))
    stream.close()
    assert shown == " You" and chat.history == [("ping", "You")]
    _, st = collect(chat.reply("again"))
    assert rt.text() == "User: ping\n\nAssistant: You\n\nUser: again\n\nAssistant: You said again.\n"


def test_chat_stop_string_replays_clean_reply():
    # the bot runs into "\nUser:" with no blank line: the state must still read as clean turns
    def bot(data):
        text = data.decode()
        done = text[text.rindex("Assistant:") + 10:]
        want = " ok\nUser: more"
        return ids_of(want[len(done)])[0]
    rt = ScriptedRuntime(bot, token_chunk_size=8)
    chat = ChatSession(rt, TOK, GREEDY, max_tokens=30)
    _, st = collect(chat.reply("a"))
    assert (st.text, st.stop) == (" ok", "\nUser:")
    _, st = collect(chat.reply("b"))
    # the replay goes back to the state before the prompt's last token; it and the clean reply are read
    # with the next turn
    assert rt.text() == "User: a\n\nAssistant: ok\n\nUser: b\n\nAssistant"
    _, st = collect(chat.reply("c"))
    assert rt.text() == "User: a\n\nAssistant: ok\n\nUser: b\n\nAssistant: ok\n\nUser: c\n\nAssistant"


def test_chat_async():
    async def go():
        rt = ScriptedRuntime(echo_bot, token_chunk_size=16)
        chat = ChatSession(rt, TOK, GREEDY, max_tokens=40)
        a = [i async for i in chat.reply_async("x")]
        b = [i async for i in chat.regenerate_async()]
        return a[-1], b[-1], rt
    a, b, rt = asyncio.run(go())
    assert a.text == b.text == " You said x." and rt.text() == "User: x\n\nAssistant: You said x.\n"


def test_chat_format():
    rwkv = ChatFormat()
    assert rwkv.clean("  a \r\n\r\n b\n") == "a\nb"
    assert ChatFormat("Me", "Bot").prelude("", [("q", "a")]) == "Me: q\n\nBot: a\n\n"
    play = ChatFormat(user="  Ros", bot="  Ham", sep=". ", end="\n")
    assert play.clean("a\n\nb") == "a b"
    assert play.prelude("Enter Hamlet.", [("My lord?", "Sir.")]) == "Enter Hamlet.\n\n  Ros. My lord?\n  Ham. Sir.\n"
    assert play.ask("Hi") == "  Ros. Hi\n  Ham." and play.stops() == ["\n", "\n  Ros."]


def test_chat_single_line_format():
    def bot(data):
        text = data.decode()
        done = text[text.rindex("  Ham.") + 6:]
        return ids_of(" Aye.\n  Ros. no"[len(done)])[0]
    rt = ScriptedRuntime(bot, token_chunk_size=8)
    chat = ChatSession(rt, TOK, GREEDY, ChatFormat("  Ros", "  Ham", ". ", "\n"), intro="Enter.", max_tokens=30)
    _, st = collect(chat.reply("Speak"))
    _, st = collect(chat.reply("More"))
    assert st.text == " Aye." and st.stop == "\n"
    assert rt.text() == "Enter.\n\n  Ros. Speak\n  Ham. Aye.\n  Ros. More\n  Ham. Aye."


# ----------------------------------------------------------------- real numbers: the numpy reference runtime

GOLDEN = Path(__file__).resolve().parent / "golden"


def reference_greedy(info, w, prompt, n):
    from webrwkv.reference import forward
    logits, state = forward(w, info, prompt)
    ids = []
    for _ in range(n):
        ids.append(int(np.argmax(logits)))
        logits, state = forward(w, info, [ids[-1]], state)
    return ids


@pytest.mark.parametrize("version", ["v5", "v7"])
def test_greedy_stream_matches_reference_forward(version):
    from webrwkv.reference import ReferenceRuntime, forward
    info, w = load_weights(str(GOLDEN / f"{version}.st"))
    prompt = [int(t) for t in np.random.default_rng(1).integers(1, info.vocab, 11)]
    rt = ReferenceRuntime((info, w), 1, 4)
    _, st = collect(generate_stream(rt, TOK, prompt, GREEDY, 12, eos_id=None))
    assert st.ids == reference_greedy(info, w, prompt, 12)
    _, want = forward(w, info, prompt + st.ids[:-1])  # the slot read all but the last token
    got = rt.get_state(0)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)


def test_seeded_sampling_loop_matches_direct_sampler():
    from webrwkv.reference import ReferenceRuntime, forward
    info, w = load_weights(str(GOLDEN / "v7.st"))
    params = SamplerParams(temperature=1.3, top_p=0.9, top_k=50, presence_penalty=0.4,
                           frequency_penalty=0.3, seed=11)
    rt = ReferenceRuntime((info, w), 1, 8)
    _, st = collect(generate_stream(rt, TOK, [5, 6, 7], params, 15, eos_id=None))
    s = Sampler(params)
    logits, state = forward(w, info, [5, 6, 7])
    want = []
    for _ in range(15):
        want.append(s(logits))
        logits, state = forward(w, info, [want[-1]], state)
    assert st.ids == want


def test_batch_matches_solo_reference():
    from webrwkv.reference import ReferenceRuntime
    info, w = load_weights(str(GOLDEN / "v6.st"))
    rng = np.random.default_rng(2)
    prompts = [[int(t) for t in rng.integers(1, info.vocab, n)] for n in (9, 2, 5)]
    rt = ReferenceRuntime((info, w), 3, 4)
    items = list(generate_batch(rt, TOK, prompts, GREEDY, max_tokens=7, eos_id=None))
    for s, p in enumerate(prompts):
        assert items[-1].slots[s].ids == reference_greedy(info, w, p, 7)


def test_async_stream_and_chat_on_reference_runtime():
    from webrwkv.reference import ReferenceRuntime
    info, w = load_weights(str(GOLDEN / "v7.st"))
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]

    async def go():
        rt = ReferenceRuntime((info, w), 1, 3)
        items = [i async for i in generate_stream_async(rt, TOK, prompt, GREEDY, 10, eos_id=None)]
        chat = ChatSession(ReferenceRuntime((info, w), 1, 16), TOK, GREEDY, max_tokens=6)
        a = [i async for i in chat.reply_async("hi")][-1]
        b = [i async for i in chat.regenerate_async()][-1]
        return items[-1], a, b
    st, a, b = asyncio.run(go())
    assert st.ids == reference_greedy(info, w, prompt, 10)
    assert a.ids == b.ids == reference_greedy(info, w, ids_of("User: hi\n\nAssistant:"), len(a.ids))


def test_end_of_text_without_eos_stop_decodes_as_nothing():
    """With eos_id=None a sampled token 0 is not a stop and adds no text (the tokenizer refuses to decode it)."""
    h, i = ids_of("hi")
    rt = ScriptedRuntime(lambda data: [h, i, 0][(len(rt.seen[0]) - 1) % 3])  # "hi", end-of-text, again
    pieces, st = collect(generate_stream(rt, TOK, ids_of(">"), GREEDY, 7, eos_id=None))
    assert st.ids == [h, i, 0, h, i, 0, h]
    assert [p for _, p in pieces] == ["h", "i", "", "h", "i", "", "h"]
    assert (st.text, st.stop_reason) == ("hihih", "max_tokens")
    assert rt.seen[0] == ids_of(">") + st.ids[:-1]
    items = list(generate_batch(ScriptedRuntime(lambda data: 0), TOK, [ids_of(">")], GREEDY, 3, eos_id=None))
    assert items[-1].slots[0].ids == [0, 0, 0] and items[-1].slots[0].text == ""
