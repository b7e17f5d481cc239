"""Command line: generate, chat, batch, bench, logits, tokenize, info, convert, serve, devices.

Each subcommand's arguments are declared here; its implementation lives in the
module named in COMMANDS and is imported only when that command runs, so
``webrwkv tokenize`` never pays for the GPU stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import WebRwkvError

# command -> "module:function"; the function takes the parsed argparse.Namespace
# and returns an exit code (or None for 0).
COMMANDS = {
    "generate": "webrwkv.chat:generate_main",
    "chat": "webrwkv.chat:chat_main",
    "batch": "webrwkv.chat:batch_main",
    "bench": "webrwkv.benchmark:bench_main",
    "logits": "webrwkv.convert:logits_main",
    "info": "webrwkv.convert:info_main",
    "convert": "webrwkv.convert:convert_main",
    "tokenize": "webrwkv.tokenizer:tokenize_main",
    "detokenize": "webrwkv.tokenizer:detokenize_main",
    "serve": "webrwkv.server:serve_main",
    "bundle": "webrwkv.bundle:bundle_main",
    "serve --api": "webrwkv.api:serve_api_main",
    "devices": "webrwkv.gpu.native:devices_main",
}


# the values of webrwkv.server_limits (a test keeps them equal)
SERVE_LIMITS = """limits:
  connections   64 served at once, 256 more waiting, then 503; listen backlog 128
  requests      line, headers and body within 30 s (an idle keep-alive ends then);
                lines of at most 64 KiB, at most 100 headers; bodies over 1 MiB
                close the connection
  answers       the client must take each 1 MiB within 60 s"""


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.85)
    p.add_argument("--top-k", type=int, default=0, help="0 disables top-k")
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--penalty-decay", type=float, default=0.996)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def _token_ids(text: str) -> str:
    """--tokens as given; an id no vocabulary can hold is refused here, as numpy cannot even hold it."""
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        return text  # not numbers: the command says so
    big = [i for i in ids if not -2**63 <= i < 2**63]
    if big:
        raise argparse.ArgumentTypeError(f"token id {str(big[0])[:40]} is outside the vocabulary")
    return text


def _engine_args(p: argparse.ArgumentParser, backend_default: str = "native") -> None:
    p.add_argument("--model", default=None, help="model file or URL (default: the bundled model)")
    p.add_argument("--vocab", default=None, help="vocabulary file or URL (default: <model>.vocab.txt next to "
                   "the model, else World)")
    p.add_argument("--backend", choices=["native", "reference"], default=backend_default)
    p.add_argument("--adapter", default=None, help="GPU adapter name or index (see `webrwkv devices`)")
    p.add_argument("--quant", choices=["none", "int8", "nf4"], default="none")
    p.add_argument("--lora", action="append", default=[], help="LoRA file[:alpha] merged at load")
    p.add_argument("--state", default=None,
                   help="state file (.st or .pth with blocks.N.att.time_state) every slot starts from")


def _version() -> str:
    from . import __version__

    return f"webrwkv {__version__}"


CHAT_HELP = "terminal chat in the model's format; the bundled model plays Romeo and Juliet"
CHAT_ABOUT = ("Terminal chat in the model's own format, from the model card next to it (prompt_format). "
              "The bundled Shakespeare model plays a scene of Romeo and Juliet: you speak as Romeo, it "
              "answers as Juliet. Without a model card, turns are 'User: ...' / 'Assistant: ...'.")


def _api_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("OpenAI-compatible API (--api): /v1/chat/completions, /v1/completions, /v1/models")
    g.add_argument("--api", action="store_true", help="serve the API for --model instead of the page")
    _engine_args(g)
    _sampling_args(g)  # the defaults of fields a request leaves out
    g.add_argument("--slots", type=int, default=4, help="requests decoded at once, in the same steps (default %(default)s)")
    g.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot; more get 503 (default %(default)s)")
    g.add_argument("--max-tokens", type=int, default=256, help="max_tokens of a request that gives none (default %(default)s)")
    g.add_argument("--max-tokens-limit", type=int, default=4096, help="the most max_tokens a request may ask; more get 400 (default %(default)s)")
    g.add_argument("--max-prompt-tokens", type=int, default=16384, help="prompt tokens a request may send; more get 400 (default %(default)s)")
    g.add_argument("--max-request-bytes", type=int, default=1 << 20, help="request body size; larger bodies get 413 (default %(default)s)")
    g.add_argument("--token-chunk-size", type=int, default=512, help="prompt tokens per prefill run, between decode windows (default %(default)s)")
    g.add_argument("--prompt-file", default=None, help="chat format (JSON, as for `chat`)")
    g.add_argument("--model-name", default=None, help="the model id /v1/models shows (default: the file name)")
    g.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or $WEBRWKV_API_KEY)")
    g.add_argument("--cors-origin", default="*", help="Access-Control-Allow-Origin of every answer (default %(default)s)")
    g.add_argument("--no-state-reuse", action="store_true",
                   help="read every prompt from the start (by default a prompt that continues what a free "
                        "slot's state has read reads only the rest)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="webrwkv", description="RWKV v4-v7 on WebGPU")
    ap.add_argument("--version", action="version", version=_version())
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    ap.set_defaults(subcommands=sub.choices)  # each subcommand's own parser, for its usage on a bad flag

    p = sub.add_parser("generate", help="generate text from a prompt, streamed")
    _engine_args(p)
    _sampling_args(p)
    p.add_argument("--prompt", default="")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")

    p = sub.add_parser("chat", help=CHAT_HELP, description=CHAT_ABOUT)
    _engine_args(p)
    _sampling_args(p)
    p.add_argument("--prompt-file", default=None, help="JSON with user, bot, intro and example turns "
                   "(instead of the model card's prompt_format; see prompts/)")
    p.add_argument("--max-tokens", type=int, default=256)

    p = sub.add_parser("batch", help="run several prompts at once through the slots")
    _engine_args(p)
    _sampling_args(p)
    p.add_argument("--prompts", required=True, help="text file, one prompt per line")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--token-chunk-size", type=int, default=512)

    p = sub.add_parser("bench", help="prefill/decode speed table")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", default=None)
    g.add_argument("--random", default=None, help="random weights, e.g. v7:L24:C2048")
    p.add_argument("--adapter", default=None)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--quant", choices=["none", "int8", "nf4"], default="none")
    p.add_argument("--token-chunk-size", type=int, default=512, help="tokens per prefill run (at most --prefill)")
    p.add_argument("--batch", type=int, default=1, help="also decode B slots at once, sampled: aggregate tok/s")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("logits", help="write float32 logits to a .npy file")
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", required=True, type=_token_ids, help="comma-separated token ids")
    p.add_argument("--out", required=True)
    p.add_argument("--backend", choices=["reference", "native"], default="reference")
    p.add_argument("--adapter", default=None)
    p.add_argument("--all", action="store_true", help="logits for every token: [T, vocab]")

    for name, helptext in (("tokenize", "print token ids as JSON"), ("detokenize", "print text for ids")):
        p = sub.add_parser(name, help=helptext)
        g = p.add_mutually_exclusive_group()
        g.add_argument("--vocab", default=None, help="vocabulary file or URL (default: World)")
        g.add_argument("--model", default=None, help="use this model's vocabulary (<model>.vocab.txt next to it)")
        if name == "tokenize":
            p.add_argument("text", nargs="?", default=None)
            p.add_argument("--file", default=None)
        else:
            p.add_argument("ids", help="JSON list of ids")

    p = sub.add_parser("info", help="describe a model")
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("convert", help="convert .pth/.safetensors to a safetensors layout")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--layout", choices=["official", "converted"], default="converted")
    p.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")

    p = sub.add_parser("serve", help="serve the chat page, Pyodide, the wheel and models; with --api, an "
                       "OpenAI-compatible API", epilog=SERVE_LIMITS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="(default %(default)s)")
    p.add_argument("--model-dir", default=None,
                   help="served at /models/<file>: its .st, .safetensors and .pth files, <model>.vocab.txt, "
                        "<model>.card.json, <model>.json and MODEL_CARD.md, nothing else (default: the bundled model)")
    _api_args(p)

    p = sub.add_parser("bundle", help="write a static site (page, JS API, Pyodide, wheel, models) for any web host")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (must be empty or not exist)")
    p.add_argument("--model", action="append", default=None, metavar="FILE",
                   help="model file to include with its .vocab.txt and .card.json (repeatable; "
                        "default: the bundled model)")
    p.add_argument("--no-model", action="store_true", help="include no model (the page loads models by URL)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it holds an earlier bundle")

    p = sub.add_parser("devices", help="list GPU adapters")
    p.add_argument("--json", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra:  # say it with the subcommand's usage, not the top-level one
        sub = args.subcommands.get(args.command or "")
        (sub or ap).error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.command:
        ap.print_help()
        return 0
    command = "serve --api" if args.command == "serve" and args.api else args.command
    modname, funcname = COMMANDS[command].split(":")
    try:
        func = getattr(importlib.import_module(modname), funcname)
        return int(func(args) or 0)
    except WebRwkvError as e:
        print(f"webrwkv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
