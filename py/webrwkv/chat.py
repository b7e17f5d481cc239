"""The generate, chat and batch commands: text streamed to the terminal, speeds to stderr."""

from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Any, TextIO

from .errors import TokenizerError, WebRwkvError
from .chat_session import ChatFormat, ChatSession
from .batch import BatchStats, generate_batch
from .generation import GenerationStats, generate_stream
from .runtime import DEFAULT_CHUNK
from .sampling import SamplerParams

END_OF_TEXT = 0
HELP = "Commands: '+' regenerates the last reply, /reset starts over, /quit exits; Ctrl-C stops a reply."


def load_engine_for(args: Any, max_batch: int = 1, token_chunk_size: int = DEFAULT_CHUNK) -> tuple[Any, Any]:
    """(runtime, tokenizer) for the engine options of a command."""
    from .engine import load_engine

    eng = load_engine(model=args.model, backend=args.backend, max_batch=max_batch,
                      token_chunk_size=token_chunk_size, adapter=args.adapter, quant=args.quant,
                      lora=tuple(args.lora), state=getattr(args, "state", None))
    if not args.vocab:
        return eng.runtime, eng.tokenizer
    from .tokenizer import open_vocab

    tok = open_vocab(args.vocab)
    if tok.vocab_size > eng.info.vocab:
        raise TokenizerError(f"the vocabulary {args.vocab!r} has {tok.vocab_size} ids but the model has "
                             f"{eng.info.vocab}; pass the model's own vocabulary file")
    return eng.runtime, tok


def _check_max_tokens(n: int) -> None:
    if n < 1:
        raise WebRwkvError(f"--max-tokens must be at least 1, got {n}")


def _utf8(stream: TextIO) -> None:
    """Never fail on a character the terminal cannot show."""
    if hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="replace")


def _speed_line(st: GenerationStats, prefilled: bool = True) -> str:
    decode = f"decode: {len(st.ids)} tokens, {st.decode_tps:.1f} tok/s"
    if not prefilled:  # a regenerated reply starts from the saved state: nothing was prefilled
        return f"prompt reused ({st.prompt_tokens} tokens); {decode}"
    return f"prefill: {st.prompt_tokens} tokens, {st.prefill_tps:.1f} tok/s; {decode}"


# ----------------------------------------------------------------------------- generate

def generate_main(args: Any) -> int:
    """Stream a continuation of --prompt (an empty prompt starts from end-of-text)."""
    _check_max_tokens(args.max_tokens)
    params = SamplerParams.from_args(args)
    runtime, tok = load_engine_for(args)
    prompt_ids = tok.encode(args.prompt) if args.prompt else [END_OF_TEXT]
    out = sys.stdout
    _utf8(out)
    stats = GenerationStats()
    # greedy tokens are picked on the GPU, 32 steps per read-back (the state is dropped afterwards)
    for item in generate_stream(runtime, tok, prompt_ids, params, args.max_tokens, args.stop, lookahead=32):
        if isinstance(item, GenerationStats):
            stats = item
        elif not args.json and item[1]:
            out.write(item[1])
            out.flush()
    if args.json:
        json.dump({"prompt_ids": prompt_ids, **stats.to_dict()}, out, ensure_ascii=False)
        out.write("\n")
    else:
        out.write("\n")
        out.flush()
        print(_speed_line(stats), file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- chat

def load_prompt_file(path: str | None) -> dict[str, Any]:
    """A chat prompt file (JSON): user, bot, separator, turn_end, intro, turns [[user, bot], ...], stop."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except OSError as e:
        raise WebRwkvError(f"cannot read the prompt file {path!r} ({e.strerror}); pass an existing JSON file") from None
    except json.JSONDecodeError as e:
        raise WebRwkvError(f"the prompt file {path!r} is not valid JSON ({e}); see prompts/ for examples") from None
    known = {"user", "bot", "separator", "turn_end", "intro", "turns", "stop", "description"}
    if not isinstance(cfg, dict) or set(cfg) - known:
        extra = sorted(set(cfg) - known) if isinstance(cfg, dict) else "not an object"
        raise WebRwkvError(f"the prompt file {path!r} has unknown fields {extra}; use {sorted(known)}")
    bad = [k for k in ("user", "bot", "separator", "turn_end", "intro", "description")
           if not isinstance(cfg.get(k, ""), str)]
    if bad:
        raise WebRwkvError(f"the prompt file {path!r}: {bad} must be strings")
    turns, stop = cfg.get("turns", []), cfg.get("stop", [])
    if not (isinstance(turns, list) and all(isinstance(t, list) and len(t) == 2
                                            and all(isinstance(x, str) for x in t) for t in turns)):
        raise WebRwkvError(f"the prompt file {path!r}: 'turns' must be a list of [user, bot] text pairs")
    if not (isinstance(stop, list) and all(isinstance(x, str) for x in stop)):
        raise WebRwkvError(f"the prompt file {path!r}: 'stop' must be a list of strings")
    return cfg


def chat_config(prompt_file: str | None, model: str | None) -> tuple[dict[str, Any], str]:
    """The chat's prompt fields and a line saying what the chat is: from --prompt-file, else from the
    model card's prompt_format (the bundled model's plays Romeo and Juliet), else User/Assistant."""
    if prompt_file:
        cfg = load_prompt_file(prompt_file)
        return cfg, cfg.get("description") or f"turns as in {prompt_file}"
    from .model_card import load_card

    card = load_card(model)
    if card is None:
        return {}, "User / Assistant turns (the model has no model card next to it)"
    f = card.prompt_format
    cfg = {"user": f.user, "bot": f.bot, "separator": f.separator, "turn_end": f.turn_end, "intro": f.intro,
           "turns": f.turns, "stop": card.stop}
    about = f.description or f"{f.user.strip()} / {f.bot.strip()} turns"
    if card.kind == "completion":
        about += " (a completion model: `webrwkv generate` lets it write on freely)"
    return cfg, f"{card.name}. {about}"


def make_chat(runtime: Any, tok: Any, cfg: dict[str, Any], params: SamplerParams, max_tokens: int,
              stop: list[str]) -> ChatSession:
    """A ChatSession configured by a prompt file's fields."""
    fmt = ChatFormat(user=cfg.get("user", "User"), bot=cfg.get("bot", "Assistant"),
                     sep=cfg.get("separator", ": "), end=cfg.get("turn_end", "\n\n"))
    return ChatSession(runtime, tok, params, fmt, intro=cfg.get("intro", ""),
                       turns=[tuple(t) for t in cfg.get("turns", [])], max_tokens=max_tokens,
                       stop=[*cfg.get("stop", []), *stop])


def chat_main(args: Any) -> int:
    """Terminal chat; reads one message per line from stdin (a terminal or a pipe)."""
    _check_max_tokens(args.max_tokens)
    params = SamplerParams.from_args(args)
    cfg, about = chat_config(args.prompt_file, args.model)
    runtime, tok = load_engine_for(args)
    chat = make_chat(runtime, tok, cfg, params, args.max_tokens, args.stop)
    tty = sys.stdin.isatty()
    out = sys.stdout
    _utf8(out)
    print(about, file=sys.stderr)
    print(HELP, file=sys.stderr)
    fmt = chat.fmt
    if tty:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    while True:
        try:
            line = input(f"{fmt.user.strip()}{fmt.sep}") + "\n" if tty else sys.stdin.readline()
        except EOFError:
            line = ""
        if not line:
            break
        msg = line.strip()
        if not msg:
            continue
        if msg in ("/quit", "/exit"):
            break
        if msg == "/reset":
            chat.reset()
            print("(the chat starts over)", file=sys.stderr)
            continue
        try:
            regen = msg == "+"
            stream = chat.regenerate() if regen else chat.reply(msg)
        except WebRwkvError as e:
            print(f"webrwkv: {e}", file=sys.stderr)
            continue
        speed = ""
        out.write(f"{fmt.bot.strip()}{fmt.sep.rstrip()}")
        try:
            for item in stream:
                if isinstance(item, GenerationStats):
                    speed = _speed_line(item, prefilled=not regen)
                elif item[1]:
                    out.write(item[1])
                    out.flush()
        except KeyboardInterrupt:  # Ctrl-C ends the reply, not the chat
            stream.close()
            speed = "stopped"
        out.write("\n\n")
        out.flush()
        print(f"[{speed}]", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- batch

def read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line; the two characters \\n inside a line mean a newline."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln.rstrip("\r\n") for ln in f]
    except OSError as e:
        raise WebRwkvError(f"cannot read the prompts file {path!r} ({e.strerror}); "
                           "pass a text file, one prompt a line") from None
    prompts = [ln.replace("\\n", "\n") for ln in lines if ln.strip()]
    if not prompts:
        raise WebRwkvError(f"the prompts file {path!r} has no prompts; write one prompt per line")
    return prompts


class _LiveView:
    """On a terminal: one line per slot showing the end of its text, redrawn as tokens come."""

    def __init__(self, out: TextIO, n: int):
        self.out, self.n, self.drawn, self.last = out, n, False, 0.0

    def draw(self, texts: dict[int, str], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.05:
            return
        width = max(shutil.get_terminal_size().columns - 1, 20)
        buf = [f"\x1b[{self.n}F"] if self.drawn else []
        for s, text in texts.items():
            tail = text.replace("\n", " | ")[-(width - len(str(s)) - 3):]
            buf.append(f"\x1b[2K[{s}] {tail}\n")
        self.out.write("".join(buf))
        self.out.flush()
        self.drawn, self.last = True, now

    def clear(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.n}F\x1b[J")


def batch_main(args: Any) -> int:
    """Run every prompt of --prompts at once, one slot each; print lines prefixed by [slot].

    On a terminal each slot's line is redrawn as it grows; through a pipe, lines come as completed."""
    _check_max_tokens(args.max_tokens)
    if args.token_chunk_size < 1:
        raise WebRwkvError(f"--token-chunk-size must be at least 1, got {args.token_chunk_size}")
    params = SamplerParams.from_args(args)
    prompts = read_prompts(args.prompts)
    runtime, tok = load_engine_for(args, max_batch=len(prompts), token_chunk_size=args.token_chunk_size)
    ids = [tok.encode(p) or [END_OF_TEXT] for p in prompts]
    out = sys.stdout
    _utf8(out)
    view = _LiveView(out, len(prompts)) if out.isatty() else None
    texts = {s: "" for s in range(len(prompts))}
    lines = {s: "" for s in range(len(prompts))}  # the current, unfinished line of each slot
    stats: BatchStats | None = None
    for item in generate_batch(runtime, tok, ids, params, args.max_tokens, args.stop):
        if isinstance(item, BatchStats):
            stats = item
            continue
        slot, _, piece = item
        texts[slot] += piece
        if view:
            view.draw(texts)
            continue
        *full, lines[slot] = (lines[slot] + piece).split("\n")
        for ln in full:
            out.write(f"[{slot}] {ln}\n")
        out.flush()
    if view:
        view.clear()
        lines = {s: t for s, t in texts.items()}
    for slot, rest in lines.items():
        for ln in rest.split("\n") if rest else ():
            out.write(f"[{slot}] {ln}\n")
    out.flush()
    if stats is not None:
        for slot, st in stats.slots.items():
            print(f"[{slot}] {st.prompt_tokens} prompt tokens, {len(st.ids)} generated ({st.stop_reason})",
                  file=sys.stderr)
        print(f"batch of {len(prompts)}: {stats.prompt_tokens} prompt + {stats.generated_tokens} generated tokens "
              f"in {stats.wall_s:.2f} s: {stats.tps:.1f} tok/s overall, {stats.generated_tps:.1f} generated tok/s",
              file=sys.stderr)
    return 0
