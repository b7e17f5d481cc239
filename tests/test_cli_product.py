"""The CLI's finish: --version, a subcommand's own usage on a bad flag, tokenize/detokenize --model,
URL models that find their vocabulary and model card next to them, --vocab URL, the chat banner that
says what the bundled model plays, progress bars on a terminal only, and no stale prefill line."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

import webrwkv
from webrwkv.server import make_server
from webrwkv.tokenizer import Tokenizer, default_tokenizer

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
BUNDLED = MODELS / "rwkv7-shakespeare.st"
VOCAB = MODELS / "rwkv7-shakespeare.vocab.txt"
TEXT = "  ROMEO. But soft! What light through yonder window breaks?"


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("WEBRWKV_MODEL", "WEBRWKV_PROGRESS")}
    e["PYTHONIOENCODING"] = "utf-8"
    return e


def cli(*argv: str, stdin: str = "", code: int = 0) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "webrwkv", *argv], input=stdin, capture_output=True, text=True,
                       env=env(), cwd=ROOT, timeout=300)
    assert r.returncode == code, r.stderr
    return r


@pytest.fixture(scope="module")
def served():
    """The models folder over HTTP (the project's Range server), as a remote model host would serve it."""
    srv = make_server(roots={"models": MODELS})
    srv.start()
    yield srv.url + "models/"
    srv.shutdown()
    srv.server_close()


def test_version():
    r = cli("--version")
    assert r.stdout.strip() == f"webrwkv {webrwkv.__version__}"


@pytest.mark.parametrize("command", ["generate", "chat", "tokenize", "bench", "serve"])
def test_a_bad_flag_prints_the_subcommands_usage(command):
    r = cli(command, "--no-such-flag", code=2)
    assert r.stderr.startswith(f"usage: webrwkv {command} ")
    assert "unrecognized arguments: --no-such-flag" in r.stderr


def test_tokenize_and_detokenize_take_the_models_vocabulary():
    own = Tokenizer(str(VOCAB)).encode(TEXT)
    assert own != default_tokenizer().encode(TEXT)  # the bundled model has its own 1024-id vocabulary
    assert json.loads(cli("tokenize", "--model", str(BUNDLED), TEXT).stdout) == own
    assert json.loads(cli("tokenize", TEXT).stdout) == default_tokenizer().encode(TEXT)
    assert cli("detokenize", "--model", str(BUNDLED), json.dumps(own)).stdout == TEXT + "\n"
    r = cli("tokenize", "--model", str(BUNDLED), "--vocab", str(VOCAB), TEXT, code=2)
    assert "not allowed with argument" in r.stderr


def test_a_url_model_finds_its_vocabulary_and_card(served):
    from webrwkv.model_card import load_card
    from webrwkv.tokenizer import load_tokenizer_for_model

    url = served + BUNDLED.name
    tok = load_tokenizer_for_model(url)
    assert tok.vocab_size == Tokenizer(str(VOCAB)).vocab_size == 1024
    assert tok.encode(TEXT) == Tokenizer(str(VOCAB)).encode(TEXT)
    assert load_card(url) == load_card(str(BUNDLED)) is not None
    assert load_card(served + "nothing.st") is None
    assert load_tokenizer_for_model(served + "nothing.st") is default_tokenizer()


def test_generate_from_a_url_model_and_vocab_url(served):
    url = served + BUNDLED.name
    local = cli("generate", "--backend", "reference", "--prompt", TEXT, "--max-tokens", "8", "--temperature", "0",
                "--json").stdout
    remote = cli("generate", "--backend", "reference", "--model", url, "--prompt", TEXT, "--max-tokens", "8",
                 "--temperature", "0", "--json").stdout
    assert json.loads(remote)["ids"] == json.loads(local)["ids"]
    assert json.loads(cli("tokenize", "--vocab", served + VOCAB.name, TEXT).stdout) == Tokenizer(str(VOCAB)).encode(TEXT)
    r = cli("tokenize", "--vocab", served + "missing.vocab.txt", "x", code=2)
    assert "no vocabulary at" in r.stderr


def test_chat_help_and_banner_say_what_the_bundled_model_plays():
    help_text = " ".join(cli("chat", "--help").stdout.split())
    assert "you speak as Romeo, it answers as Juliet" in help_text and "User:/Assistant:" not in help_text
    assert "the bundled model plays Romeo and Juliet" in " ".join(cli("--help").stdout.split())
    r = cli("chat", "--backend", "reference", "--temperature", "0", "--max-tokens", "6", stdin="Good morrow.\n+\n")
    banner = r.stderr.splitlines()[0]
    assert "RWKV-7 Shakespeare" in banner and "Romeo" in banner and "Juliet" in banner
    speed = [ln for ln in r.stderr.splitlines() if ln.startswith("[")]
    assert speed[0].startswith("[prefill: ")
    assert speed[1].startswith("[prompt reused (") and "prefill" not in speed[1]  # nothing was prefilled again
    assert r.stdout.count("Jul.") == 2


def run_with_tty_stderr(argv: list[str]) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal (as in an interactive shell); returns (code, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    p = subprocess.Popen([sys.executable, "-m", "webrwkv", *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=slave, env=env(), cwd=ROOT)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    p.communicate(timeout=300)
    os.close(master)
    return p.returncode, b"".join(chunks).decode("utf-8", "replace")


def test_progress_bars_on_a_terminal_and_quiet_when_piped(served):
    from gpu_util import device

    device()  # the upload bar needs the GPU backend (skips without an adapter)
    argv = ["generate", "--model", served + BUNDLED.name, "--prompt", TEXT, "--max-tokens", "2", "--temperature", "0"]
    code, tty = run_with_tty_stderr(argv)
    assert code == 0, tty
    assert "downloading rwkv7-shakespeare.st" in tty and "uploading to the GPU" in tty
    assert "/14.3M [" in tty  # the download bar knows the file's size (15,012,192 bytes = 14.3 MiB)
    piped = cli(*argv).stderr
    assert "downloading" not in piped and "uploading" not in piped and "\r" not in piped


def test_bench_says_what_it_is_doing_on_a_terminal():
    from gpu_util import device

    device()
    argv = ["bench", "--random", "v7:L2:C256", "--prefill", "16", "--decode", "4"]
    code, tty = run_with_tty_stderr(argv)
    assert code == 0, tty
    for words in ("making random weights for v7:L2:C256", "uploading to the GPU", "compiling the kernels",
                  "prefill of 16 tokens", "decoding 4 tokens"):
        assert words in tty
    piped = cli(*argv)
    assert piped.stderr == "" and "pp16 t/s" in piped.stdout
