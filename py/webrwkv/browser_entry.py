"""Python side of the browser worker (web/worker.js): the GPU device, the streamed model load, and
generation and chat through the same session code as the CLI (webrwkv.chat_session).

Weight bytes stay in JS (fetch -> GPU buffer); Python only decides where each byte range goes and
which GPU conversions run afterwards.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from . import browser_loader  # noqa: F401 - at boot, not in the first load (the page's Python compiles each module)
from .chat_session import ChatFormat, ChatSession, TextSession
from .errors import WebRwkvError
from .generation import END_OF_TEXT, GenerationStats
from .sampling import SamplerParams

_dev: Any = None   # BrowserDevice
_load: Any = None  # browser_loader.StreamingLoad in progress
_eng: Any = None   # the loaded model (Loaded)
_stop = False
_stats: dict = {}


class Loaded:
    """A model ready to generate: its runtime, tokenizer and the two sessions on slot 0 (text
    continuation and chat; whichever runs last owns the state)."""

    def __init__(self, runtime: Any, tokenizer: Any, info: Any, name: str, prefill_kernel: str,
                 card: Any = None) -> None:
        self.runtime, self.tokenizer, self.info, self.name = runtime, tokenizer, info, name
        self.prefill_kernel = prefill_kernel
        self.text = TextSession(runtime, tokenizer)
        f = card.prompt_format if card is not None else None
        self.fmt = ChatFormat() if f is None else ChatFormat(f.user, f.bot, f.separator, f.turn_end)
        self.chat = ChatSession(runtime, tokenizer, fmt=self.fmt, intro=f.intro if f else "",
                                turns=f.turns if f else (), stop=card.stop if card is not None else ())
        self.owner: Any = None


def _py(v: Any) -> Any:
    return v.to_py() if hasattr(v, "to_py") else v


async def open_device() -> dict:
    """Open (or reopen after a loss) the GPU device; returns {adapter, features, limits}."""
    global _dev
    if _dev is None or _dev.lost is not None:
        from .gpu.browser import BrowserDevice

        _dev = await BrowserDevice.open()
    from .tokenizer import default_tokenizer

    default_tokenizer()  # parse the World vocabulary once, before any model load
    return {"adapter": _dev.adapter_name, "features": sorted(_dev.features), "limits": dict(_dev.limits)}


def lose_device() -> None:
    """Destroy the GPU device as a driver reset would (to exercise the page's recovery)."""
    if _dev is not None:
        _dev.lose()


def js_device() -> Any:
    """The GPUDevice itself (the worker watches its `lost` promise)."""
    return _dev.handle if _dev is not None else None


def stream_grid(prefix: Any, size: int, url: str) -> list[int]:
    """[file size, where the tensors' bytes start] from the header bytes alone: the stream's block grid, so
    that loader.js can start the first downloads while plan_load runs."""
    from .browser_index import PrefixSource
    from .checkpoints import read_model_header

    name = url.split("?")[0].rstrip("/").split("/")[-1] or url
    src = PrefixSource(prefix.to_bytes() if hasattr(prefix, "to_bytes") else bytes(prefix), int(size), name)
    return [src.size, read_model_header(src, verify=False).data_start]


def plan_load(prefix: Any, size: int, url: str, vocab_text: str | None, tuning: Any = None,
              quant: str | None = None, progress: Any = None) -> dict:
    """Parse the header bytes, allocate the model's GPU buffers and say where each file range goes.
    quant "int8" / "nf4" quantizes the layers' matrices on the GPU as their bytes arrive. The kernels
    compile meanwhile, all at once (progress(done, total) after each); finish_load waits for them.

    Returns {device, size, dataStart, writes: [[file_start, file_end, buffer, offset, tag], ...]}.
    """
    global _load
    from .browser_loader import StreamingLoad, record_kernels
    from .kernels import Kernels

    if _dev is None or _dev.lost is not None:
        raise WebRwkvError("the GPU device is not open (it was lost?); load the model again")
    unload()
    data = prefix.to_bytes() if hasattr(prefix, "to_bytes") else bytes(prefix)
    tuning, quant = dict(_py(tuning) or {}), str(quant or "none")
    # the kernels first: a dry run of the model writes their sources and their compiles start, so the browser
    # compiles them while the buffers are planned, before the uploads share its GPU process
    t0, page_t0 = time.perf_counter(), _dev.clock()[0]
    recorded = record_kernels(_dev, data, int(size), url, tuning, quant)
    record_s = time.perf_counter() - t0
    compiles = Kernels.compile_ahead(_dev, recorded, progress)
    try:
        _load = StreamingLoad(_dev, data, int(size), url, vocab_text, tuning=tuning, quant=quant)
    except BaseException:
        compiles.close()
        raise
    _load.kernels = asyncio.ensure_future(_compiled(compiles, t0, page_t0, record_s))
    return {"device": _dev.handle, "size": _load.size, "dataStart": _load.data_start, "writes": _load.writes}


def trace_memory(start: bool) -> int:
    """Start tracing Python allocations, or stop and return the peak bytes since the start."""
    import tracemalloc

    if start:
        tracemalloc.start()
        return 0
    peak = tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else 0
    tracemalloc.stop()
    return int(peak)


def write_done(tag: int, buf: Any = None) -> None:
    """Every byte of write `tag` is queued; a staged tensor (in `buf`) is converted on the GPU now."""
    if _load is not None:
        _load.write_done(int(tag), buf)


async def _compiled(compiles: Any, t0: float, page_t0: float, record_s: float) -> dict:
    """Wait for the load's kernels. Returns the seconds from the load's start until all had compiled, stamped
    by the page's JS as each compile's promise settled (compile_s), and until Python's event loop had seen
    them all (seen_s; it shares the page's thread with the arriving weights); of it Python's dry run of the
    model that wrote their sources (record_s)."""
    await compiles
    seen, ready = _dev.clock()
    return {"compile_s": max(ready - page_t0, record_s), "seen_s": seen - page_t0, "record_s": record_s}


async def finish_load(card_text: str | None = None) -> dict:
    """Run the remaining conversions, build the runtime and return the model's description. The model
    card (if any; the page reports a broken one) sets the chat format, intro and stop strings."""
    global _load, _eng
    if _load is None:
        raise WebRwkvError("no model load is in progress; call load again")
    ld, _load = _load, None
    runtime, tokenizer, info = await ld.finish()
    t0 = time.perf_counter()
    kernels = dict(await ld.kernels)
    kernel = await _warm_up(runtime)
    kernels["ready_s"] = time.perf_counter() - t0
    card = None
    if card_text:
        from .errors import ModelCardError
        from .model_card import parse_card

        try:
            card = parse_card(str(card_text))
        except ModelCardError:
            card = None
    _eng = Loaded(runtime, tokenizer, info, ld.name, kernel, card)
    return {"name": ld.name, **info.to_dict(), "adapter": _dev.adapter_name, "prefill_kernel": kernel,
            "quant": ld.quant, "weight_bytes": runtime.weight_bytes, "chat_format": _eng.fmt.to_dict(),
            "kernels": kernels}


async def _warm_up(rt: Any) -> str:
    """Compile the prefill, decode and sampling kernels now, not on first use. If the browser's WGSL
    compiler refuses the tiled GEMM kernel (Chrome's uniformity analysis is stricter than wgpu-native's),
    prefill falls back to the GEMV kernel, token rows in parallel. Returns the prefill kernel."""
    kernel = "gemm"
    gemm = [0] * (rt.k.tuning.gemv_max_t + 1)  # the fewest tokens that take the GEMM kernel
    rt.push(0, gemm)
    await rt.run_async()
    await _dev.sync_async()
    if _dev.errors and rt.k.tuning.gemv_max_t < len(gemm):
        _dev.errors.clear()
        rt.use_gemv_prefill()
        rt.push(0, [0, 0])
        await rt.run_async()
        kernel = "gemv"
    from .sampling import Sampler

    dec = rt.decoder
    dec.configure(0, Sampler(SamplerParams(temperature=1.0, top_p=0.5, seed=0)))
    await dec.read_async(dec.submit({0: 0}, 1))
    rt.reset(0)
    _dev.raise_errors("preparing the GPU kernels")  # a kernel the browser cannot compile fails here
    return kernel


def unload() -> None:
    """Free the model's GPU memory (the device stays open)."""
    global _load, _eng
    if _load is not None:
        _load.cancel()
        if _load.kernels is not None:
            _load.kernels.cancel()
        _load = None
    _eng = None
    if _dev is not None and _dev.lost is None:
        _dev.free_owned()  # GPU memory goes back now, not whenever JS collects the buffers


def _need() -> Loaded:
    if _eng is None:
        raise WebRwkvError("no model is loaded; load one first")
    return _eng


def stop() -> None:
    """Ask the running generation to end after the current token."""
    global _stop
    _stop = True


def reset() -> None:
    """Start over from an empty state."""
    e = _need()
    e.text.reset()
    e.chat.reset(e.chat.default_intro, [])
    e.owner = None


async def save_state(name: str) -> None:
    """Remember the current text state (and what the model has yet to read) under `name`."""
    await _need().text.save_async(name)


def restore_state(name: str) -> None:
    """Go back to a state saved with save_state."""
    e = _need()
    e.text.restore(name)
    e.owner = e.text


def load_state(data: Any, name: str) -> dict:
    """Start from a state file's state (the bytes of a safetensors or .pth file with blocks.N.att.time_state,
    fetched whole by JS); None (no data) goes back to the model's own. Reset, like reset() does; a state
    made for another model is refused (ModelFormatError) and changes nothing."""
    from .models.states import read_state
    from .sources import BytesSource

    e = _need()
    state = None
    if data is not None:
        raw = data.to_bytes() if hasattr(data, "to_bytes") else bytes(data)
        state = read_state(BytesSource(raw, str(name)), e.info, str(name))
    e.runtime.set_initial_state(state)
    reset()
    return {"name": str(name) if state is not None else "", "layers": e.info.n_layer}


def count_tokens(text: Any) -> int:
    """How many tokens `text` is for the loaded model's tokenizer; for a list of {role, content} messages,
    how many the conversation is as the chat session writes it."""
    e = _need()
    if not isinstance(text, str):
        text = e.chat.transcript([dict(m) for m in _py(text)])
    return len(e.tokenizer.encode(text))


def _options(o: dict) -> tuple[SamplerParams, int, list[str]]:
    seed = o.get("seed")
    try:
        p = SamplerParams(temperature=float(o.get("temperature", 1.0)), top_p=float(o.get("top_p", 0.85)),
                          top_k=int(o.get("top_k", 0)), presence_penalty=float(o.get("presence_penalty", 0.0)),
                          frequency_penalty=float(o.get("frequency_penalty", 0.0)),
                          penalty_decay=float(o.get("penalty_decay", 0.996)), min_p=float(o.get("min_p", 0.0)),
                          seed=None if seed is None else int(seed))
        max_tokens = int(o.get("max_tokens", 128))
    except (TypeError, ValueError) as e:
        raise WebRwkvError(f"a generation option is not a number ({e})") from None
    if max_tokens < 1:
        raise WebRwkvError(f"max_tokens must be at least 1, got {max_tokens}")
    stops = o.get("stop") or []
    return p.validate(), max_tokens, [str(s) for s in ([stops] if isinstance(stops, str) else stops)]


async def _run(stream: Any, n_prompt: int, emit: Any) -> dict:
    """Drive a session's stream: emit(token, text) per token, stop on request, and the speed numbers."""
    global _stop
    _stop = False
    dev = _dev
    t0 = time.perf_counter()
    t_first = wait_first = None
    calls_first = 0
    out: list[int] = []
    stats: GenerationStats | None = None
    reason = ""
    try:
        async for item in stream:
            if isinstance(item, GenerationStats):
                stats = item
                break
            token, piece = item
            if t_first is None:
                t_first, wait_first = time.perf_counter(), dev.wait_s
            out.append(token)
            emit(token, piece)
            dev.js_calls += 1
            if len(out) == 1:
                calls_first = dev.js_calls
            if _stop:
                reason = "stopped"
                break
    finally:
        await stream.aclose()
    t_end = time.perf_counter()
    dev.raise_errors("generation")  # a GPU validation error would otherwise show only as wrong tokens
    steps = max(len(out) - 1, 0)
    decode_s = (t_end - t_first) if t_first is not None else 0.0
    py_s = max(decode_s - (dev.wait_s - wait_first), 0.0) if t_first is not None else 0.0
    prefill_s = (t_first or t_end) - t0
    n_prompt = stats.prompt_tokens if stats else n_prompt
    _stats.clear()
    _stats.update({
        "prompt_tokens": n_prompt, "completion_tokens": len(out),
        "prefill_s": prefill_s, "decode_s": decode_s,
        "prefill_tps": n_prompt / prefill_s if prefill_s > 0 else 0.0,
        "decode_tps": steps / decode_s if decode_s > 0 and steps else 0.0,
        "py_step_s": py_s / steps if steps else 0.0,
        "py_share": py_s / decode_s if decode_s > 0 and steps else 0.0,
        "js_calls_per_step": (dev.js_calls - calls_first) / steps if steps else 0.0,
        "stop_reason": reason or (stats.stop_reason if stats else "max_tokens"),
        "finish_reason": "length" if (not reason and stats and stats.stop_reason == "max_tokens") else "stop",
        "ids": out,
    })
    return dict(_stats)


async def generate(prompt: Any, options: Any, emit: Any) -> dict:
    """Stream tokens of a continuation of the current state; emit(token, text) per token.
    With options["chat"], a blank line is inserted first when the previous text did not end in one."""
    e = _need()
    o = dict(_py(options) or {})
    params, max_tokens, stops = _options(o)
    prompt = prompt if isinstance(prompt, str) else [int(t) for t in _py(prompt)]
    if e.owner is e.chat:  # the chat session moved the state: text continues from an empty one
        e.text.reset()
    e.owner = e.text
    eos = None if o.get("ignore_eos") else END_OF_TEXT
    stream = e.text.generate_async(prompt, params, max_tokens, stops, eos, separate=bool(o.get("chat")))
    return await _run(stream, 0, emit)


async def chat(messages: Any, options: Any, emit: Any) -> dict:
    """Answer an OpenAI-style conversation [{role, content}] with the model's chat format; the state is
    reused when the conversation extends the previous one (webrwkv.chat_session.ChatSession)."""
    e = _need()
    o = dict(_py(options) or {})
    params, max_tokens, stops = _options(o)
    if e.owner is not e.chat:
        e.chat.reset(e.chat.default_intro, [])
    e.owner = e.chat
    e.chat.set_params(params)
    e.chat.max_tokens, e.chat.extra_stops = max_tokens, stops
    msgs = [dict(m) for m in _py(messages)]
    return await _run(e.chat.respond_async(msgs), 0, emit)


async def kernel_times(batch: int = 1, steps: int = 200, prefill: int = 0) -> dict:
    """webrwkv.kernel_times.measure on the loaded model; it leaves garbage in the state, so both sessions
    start over."""
    from .kernel_times import measure

    e = _need()
    try:
        return await measure(e.runtime, int(batch), int(steps), int(prefill))
    finally:
        reset()


def stats() -> dict:
    """The last generation's numbers, plus the adapter."""
    return {**_stats, "adapter": _dev.adapter_name if _dev else "",
            "prefill_kernel": _eng.prefill_kernel if _eng else ""}


# --- for the page: the model card (no engine state is touched) ---------------------------------

def model_card(text: str) -> dict:
    """A model card (<model>.card.json) checked and filled in; raises ModelCardError when it is wrong."""
    from .model_card import parse_card

    return parse_card(str(text)).to_dict()
