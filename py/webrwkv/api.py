"""`webrwkv serve --api`: an OpenAI-compatible HTTP server (aiohttp) over the continuous-batching scheduler:
/v1/chat/completions, /v1/completions (streamed as server-sent events or whole), /v1/models, /health."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator

from .api_schema import Answer, LeadStrip, Limits, Plan, check_prompt_length, error_body, model_object
from .api_schema import parse_chat, parse_completion
from .chat_session import ChatFormat
from .errors import RequestError, TokenizerError, WebRwkvError
from .generation import GenerationStats
from .scheduler import Job, Scheduler

try:
    from aiohttp import web
except ImportError:  # the page and the CLI work without it; only serve --api needs it
    web = None  # type: ignore[assignment]

FINGERPRINT = "webrwkv-0.1"


def _need_aiohttp() -> None:
    if web is None:
        raise WebRwkvError("serve --api needs aiohttp: install webrwkv with its 'api' extra "
                           "(pip install 'webrwkv[api]') or the pinned requirements.txt")


class ApiServer:
    """The HTTP side: parses requests, hands them to a Scheduler, streams what it picks.

    `start()` runs the server in a thread of its own (tests, embedding); `run()` serves in this thread until
    interrupted. `port=0` takes a free port (see `.port` after start)."""

    def __init__(self, scheduler: Scheduler, tokenizer: Any, model_name: str, fmt: ChatFormat | None = None,
                 limits: Limits | None = None, host: str = "127.0.0.1", port: int = 8000,
                 max_request_bytes: int = 1 << 20, api_key: str | None = None, cors_origin: str = "*") -> None:
        _need_aiohttp()
        self.sch, self.tok, self.model = scheduler, tokenizer, model_name
        self.fmt, self.lim = fmt or ChatFormat(), limits or Limits()
        self.host, self.port, self.max_bytes = host, port, max_request_bytes
        self.api_key, self.cors = api_key, cors_origin
        self.vocab = int(getattr(scheduler.rt, "info").vocab)
        self.created = int(time.time())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Any = None
        self._thread: threading.Thread | None = None

    # -- the app ------------------------------------------------------------------------------------
    def app(self) -> Any:
        app = web.Application(client_max_size=self.max_bytes, middlewares=[self._middleware])
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{name}", self._model)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/health", self._health)
        app.on_response_prepare.append(self._cors_headers)
        return app

    async def _cors_headers(self, request: Any, response: Any) -> None:
        response.headers["Access-Control-Allow-Origin"] = self.cors
        response.headers["Access-Control-Expose-Headers"] = "Retry-After"

    def _error(self, status: int, message: str, param: str | None = None, code: str | None = None,
               headers: dict | None = None) -> Any:
        return web.json_response(error_body(message, status, param, code), status=status, headers=headers)

    @web.middleware if web is not None else (lambda f: f)
    async def _middleware(self, request: Any, handler: Any) -> Any:
        if request.method == "OPTIONS":  # CORS preflight
            return web.Response(status=204, headers={
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS", "Access-Control-Max-Age": "86400",
                "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers",
                                                                    "Authorization, Content-Type")})
        if self.api_key and request.path != "/health" and \
                request.headers.get("Authorization", "") != f"Bearer {self.api_key}":
            return self._error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", None,
                               "invalid_api_key")
        try:
            return await handler(request)
        except RequestError as e:
            headers = {"Retry-After": "1"} if e.status == 503 else None
            return self._error(e.status, str(e), e.param, e.code, headers)
        except web.HTTPRequestEntityTooLarge:
            return self._error(413, f"the request body is over {self.max_bytes} bytes (the server's "
                                    "--max-request-bytes)", None, "request_too_large")
        except web.HTTPException as e:
            if e.status == 405:
                return self._error(405, f"{request.method} is not allowed on {request.path}", None, "method_not_allowed")
            if e.status == 404:
                return self._error(404, f"no such endpoint: {request.path}; see /v1/models, /v1/chat/completions, "
                                        "/v1/completions", None, "not_found")
            return self._error(e.status, e.reason)
        except WebRwkvError as e:
            return self._error(500, str(e), None, "engine_error")
        except (asyncio.CancelledError, ConnectionError):
            raise  # the client went away
        except Exception as e:  # noqa: BLE001 - a bug: still an answer the client can read
            return self._error(500, f"internal error: {e!r}", None, "internal_error")

    # -- endpoints ----------------------------------------------------------------------------------
    async def _models(self, request: Any) -> Any:
        return web.json_response({"object": "list", "data": [model_object(self.model, self.created)]})

    async def _model(self, request: Any) -> Any:
        name = request.match_info["name"]
        if name != self.model:
            return self._error(404, f"the model '{name}' does not exist; this server has '{self.model}'",
                               "model", "model_not_found")
        return web.json_response(model_object(self.model, self.created))

    async def _health(self, request: Any) -> Any:
        st = self.sch.status()
        return web.json_response({"status": "error" if st["error"] else "ok", "model": self.model, **st},
                                 status=500 if st["error"] else 200)

    async def _body(self, request: Any) -> dict:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(f"the body is not valid JSON ({e}); send a JSON object", code="invalid_json") from None
        if not isinstance(body, dict):
            raise RequestError("the body must be a JSON object", code="invalid_json")
        return body

    async def _chat(self, request: Any) -> Any:
        return await self._run(request, parse_chat(await self._body(request), self.lim, self.vocab, self.fmt))

    async def _completions(self, request: Any) -> Any:
        return await self._run(request, parse_completion(await self._body(request), self.lim, self.vocab))

    # -- one request --------------------------------------------------------------------------------
    async def _ids(self, plan: Plan) -> list[int]:
        if isinstance(plan.prompt, list):
            ids = plan.prompt
        else:  # long texts: tokenized off the event loop
            try:
                ids = await asyncio.to_thread(self.tok.encode, plan.prompt) if plan.prompt else []
            except TokenizerError as e:
                raise RequestError(f"the prompt cannot be tokenized: {e}", 400, "prompt") from None
        ids = ids or [0]  # an empty prompt starts from end-of-text
        check_prompt_length(len(ids), self.lim)
        return ids

    async def _events(self, job: Job, queue: asyncio.Queue) -> AsyncIterator[tuple[list, Any]]:
        """(pieces, stats) as the scheduler sends them; raises the error a failed job got."""
        self.sch.submit(job)
        try:
            while True:
                pieces, stats, error = await queue.get()
                if isinstance(error, WebRwkvError):
                    raise error
                if error is not None:
                    raise WebRwkvError(f"the engine failed: {error!r}") from error
                yield pieces, stats
                if stats is not None:
                    return
        finally:
            self.sch.cancel(job)  # a no-op once finished; frees the slot of a client that went away

    async def _run(self, request: Any, plan: Plan) -> Any:
        ids = await self._ids(plan)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        def emit(pieces: list, stats: GenerationStats | None, error: BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (pieces, stats, error))

        job = Job(ids, plan.params, plan.max_tokens, plan.stop, plan.eos_id, emit)
        answer = Answer(plan, self.model, FINGERPRINT)
        strip = LeadStrip() if plan.kind == "chat" else (lambda s: s)
        events = self._events(job, queue)
        if not plan.stream:
            text, stats = [], None
            async for pieces, stats in events:
                text += [strip(p) for _, p in pieces]
            return web.json_response(answer.whole("".join(text), stats, job.cached))
        first = await events.__anext__()  # a full queue or a failure before any token is a plain error
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        send = lambda obj: resp.write(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")  # noqa: E731
        try:
            if plan.kind == "chat":
                await send(answer.chunk(None, first=True))
            pending: Any = first
            while pending is not None:
                pieces, stats = pending
                text = "".join(strip(p) for _, p in pieces)
                if text:
                    await send(answer.chunk(text))
                if stats is not None:
                    await send(answer.chunk(None, _finish(stats)))
                    if plan.include_usage:
                        await send(answer.usage_chunk(stats, job.cached))
                    break
                pending = await events.__anext__()
            await resp.write(b"data: [DONE]\n\n")
        except WebRwkvError as e:  # after the headers: the error goes in the stream, as OpenAI sends it
            await send(error_body(str(e), 500, None, "engine_error"))
        finally:
            await events.aclose()
        return resp

    # -- running ------------------------------------------------------------------------------------
    async def _start_site(self) -> None:
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def start(self) -> "ApiServer":
        """Serve from a background thread; returns once the port is bound."""
        ready = threading.Event()
        failed: list[BaseException] = []

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self._start_site())
            except BaseException as e:  # noqa: BLE001 - reported to start()'s caller
                failed.append(e)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=main, name="webrwkv-api", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise WebRwkvError(f"cannot serve on {self.host}:{self.port}: {failed[0]}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self.sch.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _finish(stats: GenerationStats) -> str:
    return "length" if stats.stop_reason == "max_tokens" else "stop"


def serve_api_main(args: Any) -> int:
    """`webrwkv serve --api`: load the model once with --slots slots and serve until Ctrl-C."""
    _need_aiohttp()
    from .chat import chat_config, load_engine_for
    from .sampling import SamplerParams

    for name in ("slots", "max_queue", "max_request_bytes", "max_tokens", "max_tokens_limit", "max_prompt_tokens",
                 "token_chunk_size"):
        if getattr(args, name) < 1:
            raise WebRwkvError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.max_tokens > args.max_tokens_limit:
        raise WebRwkvError(f"--max-tokens ({args.max_tokens}) is above --max-tokens-limit ({args.max_tokens_limit})")
    params = SamplerParams.from_args(args)
    cfg, _ = chat_config(args.prompt_file, args.model)  # --prompt-file, else the model card's format
    # load_engine_for passes every engine option of the command line (model, vocab, backend, quant, LoRA and
    # the initial state where load_engine takes one) to load_engine
    runtime, tok = load_engine_for(args, max_batch=args.slots, token_chunk_size=args.token_chunk_size)
    prefer_gemv(runtime, args.slots)
    fmt = ChatFormat(user=cfg.get("user", "User"), bot=cfg.get("bot", "Assistant"),
                     sep=cfg.get("separator", ": "), end=cfg.get("turn_end", "\n\n"))
    limits = Limits(params, args.max_tokens, args.max_tokens_limit, args.max_prompt_tokens,
                    tuple([*cfg.get("stop", []), *args.stop]))
    name = args.model_name or Path(str(args.model or "rwkv7-shakespeare")).stem
    sch = Scheduler(runtime, tok, max_queue=args.max_queue, reuse_state=not args.no_state_reuse).start()
    srv = ApiServer(sch, tok, name, fmt, limits, args.host, args.port, args.max_request_bytes,
                    args.api_key or os.environ.get("WEBRWKV_API_KEY") or None, args.cors_origin)
    srv.start()
    print(f"webrwkv API: {srv.url}/v1 (model '{name}', {args.slots} slots, queue {args.max_queue}, "
          f"max_tokens {args.max_tokens} / {args.max_tokens_limit}, prompts up to {args.max_prompt_tokens} "
          f"tokens, bodies up to {args.max_request_bytes} bytes); Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        while srv._thread is not None and srv._thread.is_alive():
            srv._thread.join(0.5)
    finally:
        srv.stop()
    return 0


def prefer_gemv(runtime: Any, slots: int) -> None:
    """On a CPU adapter (lavapipe) decode steps of several slots run the GEMV kernel, token rows side by side:
    measured 12x faster there than the tiled GEMM at 2-4 tokens (bench/RESULTS.md), and each slot's numbers are
    then exactly those of a stream decoded alone. GPUs keep their tuning (WEBRWKV_TUNING sets it)."""
    dev = getattr(runtime, "dev", None)
    if dev is not None and getattr(dev, "adapter_type", "") == "CPU" and "gemv_max_t" not in os.environ.get(
            "WEBRWKV_TUNING", ""):
        runtime.k.tuning.gemv_max_t = max(runtime.k.tuning.gemv_max_t, slots)
