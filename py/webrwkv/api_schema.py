"""The OpenAI request bodies the API server takes, checked field by field (RequestError says what is wrong),
and the objects it answers with: chat.completion(.chunk), text_completion, model, error."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from .chat_session import ChatFormat, split_messages
from .errors import RequestError, SamplingError, WebRwkvError
from .generation import END_OF_TEXT, GenerationStats
from .sampling import SamplerParams

MAX_STOPS = 16
MAX_STOP_CHARS = 256
# fields a client may send that change nothing here (or only in their default form, checked below)
IGNORED = {"model", "user", "metadata", "store", "service_tier", "parallel_tool_calls", "modalities",
           "prediction", "reasoning_effort", "web_search_options", "safety_identifier", "prompt_cache_key"}
SAMPLING = {"temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "penalty_decay",
            "seed", "logit_bias", "max_tokens", "stop", "n", "stream", "stream_options", "logprobs"}
CHAT_FIELDS = SAMPLING | IGNORED | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools",
                                    "tool_choice", "functions", "function_call"}
COMPLETION_FIELDS = SAMPLING | IGNORED | {"prompt", "echo", "suffix", "best_of"}


@dataclass
class Limits:
    """What the server allows and what a request gets when it leaves a field out."""

    params: SamplerParams = field(default_factory=SamplerParams)
    max_tokens: int = 256           # a request's max_tokens when it gives none
    max_tokens_limit: int = 4096    # the most it may ask for
    max_prompt_tokens: int = 16384
    stop: tuple[str, ...] = ()      # stop strings every request gets


@dataclass
class Plan:
    """A checked request: its prompt (text, or token ids for a completion) and how to generate."""

    kind: str                       # "chat" | "completion"
    prompt: str | list[int]
    params: SamplerParams
    max_tokens: int
    stop: list[str]
    stream: bool
    include_usage: bool
    eos_id: int | None = END_OF_TEXT
    model: str = ""


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> RequestError:
    return RequestError(message, 400, param, code)


def _number(body: dict, name: str, lo: float, hi: float, default: float, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(f"'{name}' must be a number, got {v!r}", name, "invalid_type")
    if v > hi or v < lo or (lo_open and v == lo):
        side = "(" if lo_open else "["
        raise _bad(f"'{name}' must be in {side}{lo}, {hi}], got {v}", name)
    return float(v)


def _int(body: dict, name: str, lo: int, hi: int, default: int | None) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(f"'{name}' must be an integer, got {v!r}", name, "invalid_type")
    if not lo <= v <= hi:
        raise _bad(f"'{name}' must be between {lo} and {hi}, got {v}", name)
    return v


def _check_fields(body: dict, known: set[str]) -> None:
    for name in body:
        if name not in known:
            raise _bad(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
    if _int(body, "n", 1, 1, 1) != 1:
        raise _bad("'n' must be 1", "n")
    if body.get("logprobs") not in (None, False, 0):
        raise _bad("'logprobs' is not supported (the tokens are picked on the GPU)", "logprobs")


def _stops(body: dict, lim: Limits) -> list[str]:
    v = body.get("stop")
    stops = [] if v is None else [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise _bad(f"'stop' takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters", "stop")
    return [s for s in [*lim.stop, *stops] if s]


def _banned(body: dict, vocab: int) -> tuple[int, ...]:
    bias = body.get("logit_bias")
    if bias is None:
        return ()
    if not isinstance(bias, dict):
        raise _bad("'logit_bias' must be an object {token id: bias}", "logit_bias", "invalid_type")
    out = []
    for k, v in bias.items():
        try:
            tok = int(k)
        except (TypeError, ValueError):
            raise _bad(f"'logit_bias' keys are token ids, got {k!r}", "logit_bias") from None
        if not 0 <= tok < vocab:
            raise _bad(f"'logit_bias' token {tok} is outside the vocabulary (0..{vocab - 1})", "logit_bias")
        if v != -100:
            raise _bad(f"'logit_bias' supports only -100 (ban the token), got {v!r} for {tok}", "logit_bias")
        out.append(tok)
    return tuple(out)


def _common(body: dict, lim: Limits, vocab: int, max_name: str = "max_tokens") -> dict[str, Any]:
    p = lim.params
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64):
        raise _bad(f"'seed' must be an integer in [0, 2^64), got {seed!r}", "seed")
    top_p = _number(body, "top_p", 0.0, 1.0, p.top_p)
    params = replace(p, temperature=_number(body, "temperature", 0.0, 2.0, p.temperature),
                     top_p=top_p or 1.0, top_k=_int(body, "top_k", 0, vocab, p.top_k) if top_p else 1,
                     min_p=_number(body, "min_p", 0.0, 1.0, p.min_p),
                     presence_penalty=_number(body, "presence_penalty", -2.0, 2.0, p.presence_penalty),
                     frequency_penalty=_number(body, "frequency_penalty", -2.0, 2.0, p.frequency_penalty),
                     penalty_decay=_number(body, "penalty_decay", 0.0, 1.0, p.penalty_decay),
                     seed=seed if seed is not None else p.seed, banned=(*p.banned, *_banned(body, vocab)))
    if params.min_p >= 1.0:
        raise _bad(f"'min_p' must be below 1, got {params.min_p}", "min_p")
    try:
        params.validate()
    except SamplingError as e:
        raise _bad(str(e)) from None
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be true or false, got {stream!r}", "stream", "invalid_type")
    opts = body.get("stream_options")
    if opts is not None and (not stream or not isinstance(opts, dict)
                             or not set(opts) <= {"include_usage", "include_obfuscation"}):
        raise _bad("'stream_options' is an object {include_usage: bool}, allowed only with stream: true",
                   "stream_options")
    model = body.get("model", "")
    if not isinstance(model, str):
        raise _bad("'model' must be a string", "model", "invalid_type")
    return {"params": params, "max_tokens": _int(body, max_name, 1, lim.max_tokens_limit, lim.max_tokens),
            "stop": _stops(body, lim), "stream": stream, "include_usage": bool((opts or {}).get("include_usage")),
            "model": model}


def _text(content: Any, i: int) -> str:
    """A message's content: text, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise _bad(f"messages[{i}].content must be text or a list of {{type: text, text}} parts (this model reads "
               "text only)", f"messages[{i}].content")


def parse_chat(body: dict, lim: Limits, vocab: int, fmt: ChatFormat) -> Plan:
    """A chat.completions body -> Plan: the conversation written in `fmt`, end-of-text banned (a reply
    ends at the format's stop strings), as ChatSession.respond reads it."""
    _check_fields(body, CHAT_FIELDS)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("'messages' must be a non-empty list of {role, content}", "messages", "invalid_type")
    plain = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise _bad(f"messages[{i}] must be {{role: system|developer|user|assistant, content}}",
                       f"messages[{i}].role")
        plain.append({"role": "system" if m["role"] == "developer" else m["role"], "content": _text(m.get("content"), i)})
    for name in ("tools", "functions"):
        if body.get(name):
            raise _bad(f"'{name}' is not supported: this server answers with text only", name)
    fmt_ = body.get("response_format")
    if fmt_ is not None and fmt_ != {"type": "text"}:
        raise _bad("'response_format' supports only {type: text}", "response_format")
    try:
        system, turns, user = split_messages(plain)
    except WebRwkvError as e:
        raise _bad(str(e), "messages") from None
    if not fmt.clean(user):
        raise _bad("the last user message is empty; send some text", "messages")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    c = _common(body, lim, vocab, name)
    c["params"] = replace(c["params"], banned=(*c["params"].banned, END_OF_TEXT))
    c["stop"] = [*fmt.stops(), *c["stop"]]
    return Plan("chat", fmt.prelude(system, turns) + fmt.ask(user), **c)


def parse_completion(body: dict, lim: Limits, vocab: int) -> Plan:
    """A completions body -> Plan: one prompt (text or token ids); end-of-text ends the text."""
    _check_fields(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise _bad("'prompt' must be a text or a non-empty list of token ids; send one prompt per "
                       "request (several requests run at once)", "prompt", "invalid_type")
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise _bad(f"'prompt' token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", "prompt")
    elif not isinstance(prompt, str):
        raise _bad("'prompt' must be a text or a list of token ids", "prompt", "invalid_type")
    if body.get("echo"):
        raise _bad("'echo' is not supported", "echo")
    if body.get("suffix"):
        raise _bad("'suffix' is not supported (RWKV reads left to right)", "suffix")
    _int(body, "best_of", 1, 1, 1)
    return Plan("completion", prompt, **_common(body, lim, vocab))


# -- answers ------------------------------------------------------------------------------------------
def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def finish_reason(st: GenerationStats) -> str:
    return "length" if st.stop_reason == "max_tokens" else "stop"


def usage(st: GenerationStats, cached: int) -> dict[str, Any]:
    n = len(st.ids)
    return {"prompt_tokens": st.prompt_tokens, "completion_tokens": n, "total_tokens": st.prompt_tokens + n,
            "prompt_tokens_details": {"cached_tokens": cached}}


class Answer:
    """The objects of one request's answer (id, created and model fixed at the start)."""

    def __init__(self, plan: Plan, model: str, fingerprint: str) -> None:
        self.plan, self.id, self.created = plan, new_id(plan.kind), int(time.time())
        self.model, self.fp = model, fingerprint

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.fp}

    def chunk(self, text: str | None, finish: str | None = None, first: bool = False) -> dict[str, Any]:
        """One stream chunk: text (None: the closing chunk with finish_reason)."""
        if self.plan.kind == "chat":
            delta = {"role": "assistant", "content": "", "refusal": None} if first else \
                ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            out = {**self._head("chat.completion.chunk"), "choices": [choice]}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            out = {**self._head("text_completion"), "choices": [choice]}
        if self.plan.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, st: GenerationStats, cached: int) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.plan.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage(st, cached)}

    def whole(self, text: str, st: GenerationStats, cached: int) -> dict[str, Any]:
        if self.plan.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                      "logprobs": None, "finish_reason": finish_reason(st)}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage(st, cached)}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(st)}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage(st, cached)}


class LeadStrip:
    """A chat reply's text without the blank it starts with (`Assistant:` is followed by a space)."""

    def __init__(self) -> None:
        self.started = False

    def __call__(self, piece: str) -> str:
        if not self.started:
            piece = piece.lstrip()
            self.started = bool(piece)
        return piece


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "webrwkv"}


def check_prompt_length(n: int, lim: Limits) -> None:
    if n > lim.max_prompt_tokens:
        raise RequestError(f"the prompt has {n} tokens; this server reads at most {lim.max_prompt_tokens} "
                           "(its --max-prompt-tokens)", 400, "prompt", "context_length_exceeded")


__all__: Sequence[str] = ["Limits", "Plan", "parse_chat", "parse_completion", "Answer", "LeadStrip", "error_body",
                          "model_object", "check_prompt_length", "finish_reason", "usage"]
