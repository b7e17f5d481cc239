"""Model cards: a small JSON file next to a model (<stem>.card.json) that says what the model is for
(chat or completion), how to prompt it, its licence and training data; read by the CLI and the page."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ModelCardError, SourceError

KINDS = ("chat", "completion")
MAX_BYTES = 1 << 20  # a card or vocabulary fetched next to a URL model is read up to this size


@dataclass
class PromptFormat:
    """How a conversation is written for the model: `{user}{separator}{message}{turn_end}{bot}...`."""

    user: str = "User"
    bot: str = "Assistant"
    separator: str = ": "
    turn_end: str = "\n\n"
    intro: str = ""
    turns: list[list[str]] = field(default_factory=list)  # example [user, bot] exchanges
    description: str = ""  # what a chat with this model is, in one sentence


@dataclass
class ModelCard:
    """What a model is: see docs/ARCHITECTURE.md ("Model cards") for every field."""

    name: str
    kind: str
    description: str = ""
    licence: str = ""
    training_data: str = ""
    sample_prompt: str = ""
    context_length: int = 0  # the length it was trained on (0: not stated)
    prompt_format: PromptFormat = field(default_factory=PromptFormat)
    stop: list[str] = field(default_factory=list)
    sampling: dict[str, float] = field(default_factory=dict)  # suggested temperature, top_p, ...

    def to_dict(self) -> dict[str, Any]:
        """The card as plain JSON types, with `chat`: the chat format in the page's names."""
        d = asdict(self)
        f = self.prompt_format
        d["chat"] = {"user": f.user, "bot": f.bot, "sep": f.separator, "end": f.turn_end, "intro": f.intro,
                     "turns": f.turns, "stops": list(self.stop), "description": f.description}
        return d


_STR = ("name", "kind", "description", "licence", "training_data", "sample_prompt")
_FMT_STR = ("user", "bot", "separator", "turn_end", "intro", "description")
_SAMPLING = ("temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty")


def parse_card(text: str | bytes, name: str = "model card") -> ModelCard:
    """Check a card's JSON and return it; every mistake is a ModelCardError that names the field."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelCardError(f"{name} is not valid JSON ({e}); see models/*.card.json for an example") from None
    if not isinstance(raw, dict):
        raise ModelCardError(f"{name} must be a JSON object, not {type(raw).__name__}")

    def fail(what: str) -> ModelCardError:
        return ModelCardError(f"{name}: {what}")

    known = {f for f in ModelCard.__dataclass_fields__} | {"$schema"}
    extra = sorted(set(raw) - known)
    if extra:
        raise fail(f"unknown fields {extra}; the fields are {sorted(known - {'$schema'})}")
    for k in _STR:
        if not isinstance(raw.get(k, ""), str):
            raise fail(f"'{k}' must be a string")
    if not raw.get("name", "").strip():
        raise fail("'name' is required (the model's name, shown to people)")
    if raw.get("kind") not in KINDS:
        raise fail(f"'kind' must be 'chat' or 'completion', got {raw.get('kind')!r}")
    ctx = raw.get("context_length", 0)
    if type(ctx) is not int or ctx < 0:
        raise fail("'context_length' must be a whole number of tokens (0 if unknown)")
    stop = raw.get("stop", [])
    if not (isinstance(stop, list) and all(isinstance(s, str) and s for s in stop)):
        raise fail("'stop' must be a list of non-empty strings")
    sampling = raw.get("sampling", {})
    if not isinstance(sampling, dict) or set(sampling) - set(_SAMPLING) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in sampling.values()):
        raise fail(f"'sampling' must map some of {list(_SAMPLING)} to numbers")
    pf = raw.get("prompt_format", {})
    if not isinstance(pf, dict) or set(pf) - set(PromptFormat.__dataclass_fields__):
        raise fail(f"'prompt_format' must be an object with some of {list(PromptFormat.__dataclass_fields__)}")
    for k in _FMT_STR:
        if not isinstance(pf.get(k, ""), str):
            raise fail(f"'prompt_format.{k}' must be a string")
    turns = pf.get("turns", [])
    if not (isinstance(turns, list) and all(isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t)
                                            for t in turns)):
        raise fail("'prompt_format.turns' must be a list of [user, bot] text pairs")
    for k in ("user", "bot", "turn_end"):
        if k in pf and not pf[k]:
            raise fail(f"'prompt_format.{k}' must not be empty")
    fields = {k: raw[k] for k in raw if k != "$schema"}
    fields["prompt_format"] = PromptFormat(**pf)
    fields["sampling"] = {k: float(v) for k, v in sampling.items()}
    return ModelCard(**fields)


def beside(model: str, suffix: str) -> str | None:
    """The path or URL of `<model stem><suffix>` next to a model file (None if the name has no stem)."""
    base, q = (model.split("?", 1) + [""])[:2] if "://" in model else (model, "")
    root, ext = os.path.splitext(base)
    if not ext or ext.lower() not in (".st", ".safetensors", ".pth", ".pt"):
        return None
    return root + suffix + (f"?{q}" if q else "")


def read_text(where: str, what: str = "file") -> str | None:
    """The text of a local file or http(s) URL; None when it does not exist (404, no such file)."""
    if "://" not in where:
        try:
            with open(where, "rb") as f:
                return f.read(MAX_BYTES + 1)[:MAX_BYTES].decode("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise SourceError(f"cannot read the {what} {where} ({e}); fix or remove it") from None
    if not where.startswith(("http://", "https://")):
        raise SourceError(f"{where} is not an http(s) URL or a local file")
    try:
        with urllib.request.urlopen(urllib.request.Request(where, headers={"User-Agent": "webrwkv"}), timeout=30) as r:
            data = r.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as e:
        if e.code in (404, 410):
            return None
        raise SourceError(f"downloading the {what} {where} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SourceError(f"cannot download the {what} {where} ({reason}); check the URL and the network") from None
    if len(data) > MAX_BYTES:
        raise SourceError(f"the {what} {where} is larger than {MAX_BYTES >> 20} MiB; is it the right file?")
    text = data.decode("utf-8", errors="replace")
    if text.startswith("version https://git-lfs") or text.lstrip().startswith("<"):
        return None  # a Git LFS pointer or an HTML page (a host's 'not found' page), not the file
    return text


def load_card(model: str | os.PathLike | None) -> ModelCard | None:
    """The card next to `model` (a path or URL; None: the bundled model), or None when it has none."""
    if model is None:
        from .models import default_model_path

        model = default_model_path()
    where = beside(os.fspath(model), ".card.json")
    text = read_text(where, "model card") if where else None
    return parse_card(text, os.path.basename(where.split("?")[0])) if text is not None else None
