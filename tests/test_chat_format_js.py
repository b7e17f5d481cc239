"""The page's formatChat (web/webrwkv.js, run in Node) writes a conversation exactly as the CLI's
ChatFormat does (intro, example turns, history, the reply's start), for the default format and the
bundled model's play scene from its model card."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from webrwkv.chat_session import ChatFormat
from webrwkv.model_card import load_card

ROOT = Path(__file__).resolve().parents[1]
NODE = shutil.which("node")

JS = """
import { formatChat, chatFormatOf } from "%s";
const [messages, card] = JSON.parse(process.argv[1]);
process.stdout.write(JSON.stringify({ text: formatChat(messages, chatFormatOf(card ? { card } : null)),
  stops: chatFormatOf(card ? { card } : null).stops }));
"""

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "Be brief.\nAnswer in English."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!\n\nHow can I help?"}, {"role": "user", "content": "  Two\r\nlines  "}],
]


def js(messages: list, card: dict | None) -> dict:
    if NODE is None:
        pytest.fail("node is missing: tools/setup.sh needs Node.js 18+")
    script = JS % (ROOT / "web" / "webrwkv.js").as_uri()
    r = subprocess.run([NODE, "--input-type=module", "-e", script, json.dumps([messages, card])],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def python(messages: list, fmt: ChatFormat, intro: str = "", turns: list = ()) -> str:
    system = "\n".join(m["content"].strip() for m in messages if m["role"] == "system")
    intro = "\n".join(s for s in (intro.strip(), system) if s)
    rest = [m for m in messages if m["role"] != "system"]
    pairs = [(rest[i]["content"], rest[i + 1]["content"]) for i in range(0, len(rest) - 1, 2)]
    return fmt.prelude(intro, [*turns, *pairs]) + fmt.ask(rest[-1]["content"])


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_default_format(messages):
    out = js(messages, None)
    assert out["text"] == python(messages, ChatFormat())
    assert out["stops"] == ChatFormat().stops()


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_the_bundled_models_play_format(messages):
    card = load_card(None)
    f = card.prompt_format
    fmt = ChatFormat(user=f.user, bot=f.bot, sep=f.separator, end=f.turn_end)
    out = js(messages, card.to_dict())
    assert out["text"] == python(messages, fmt, f.intro, f.turns)
    assert out["stops"] == [*fmt.stops(), *card.stop]
