"""Model cards (<model>.card.json): the bundled model's card is complete and honest about what the
model is, its chat format is the play scene the CLI uses, and a wrong card gets an error naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from webrwkv.errors import ModelCardError
from webrwkv.model_card import beside, load_card, parse_card

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "models" / "rwkv7-shakespeare.card.json"


def test_the_bundled_model_has_a_complete_card():
    card = load_card(None)
    assert card is not None and card == load_card(str(ROOT / "models" / "rwkv7-shakespeare.st"))
    assert card.kind == "completion"  # it continues plays; it does not follow instructions
    assert "does not follow instructions" in card.description
    assert card.name and card.licence and "Shakespeare" in card.training_data
    assert card.sample_prompt.startswith("ACT") and card.sample_prompt.endswith("JULIET. ")
    assert card.context_length == 256  # the training windows (MODEL_CARD.md)
    assert 0 < card.sampling["temperature"] <= 1.5 and 0 < card.sampling["top_p"] <= 1


def test_its_chat_format_is_the_play_scene_of_the_prompts_folder():
    card = load_card(None)
    play = json.loads((ROOT / "prompts" / "shakespeare.json").read_text(encoding="utf-8"))
    f = card.prompt_format
    assert (f.user, f.bot, f.separator, f.turn_end, f.intro) == (
        play["user"], play["bot"], play["separator"], play["turn_end"], play["intro"])
    assert f.turns == play["turns"] and card.stop == play["stop"]
    chat = card.to_dict()["chat"]
    assert chat == {"user": "  Rom", "bot": "  Jul", "sep": ". ", "end": "\n", "intro": play["intro"],
                    "turns": play["turns"], "stops": ["\n\n"], "description": f.description}


GOOD = {"name": "M", "kind": "chat"}


@pytest.mark.parametrize("change, words", [
    ({"kind": "instruct"}, "'kind' must be 'chat' or 'completion'"),
    ({"name": ""}, "'name' is required"),
    ({"licence": 3}, "'licence' must be a string"),
    ({"colour": "red"}, "unknown fields ['colour']"),
    ({"stop": "\n"}, "'stop' must be a list"),
    ({"stop": [""]}, "'stop' must be a list of non-empty strings"),
    ({"context_length": -1}, "'context_length'"),
    ({"context_length": 2.5}, "'context_length'"),
    ({"sampling": {"temperature": "hot"}}, "'sampling'"),
    ({"sampling": {"warmth": 1}}, "'sampling'"),
    ({"prompt_format": {"user": ""}}, "'prompt_format.user' must not be empty"),
    ({"prompt_format": {"turns": [["only one"]]}}, "'prompt_format.turns'"),
    ({"prompt_format": {"speaker": "A"}}, "'prompt_format' must be an object"),
])
def test_a_wrong_card_names_the_field(change, words):
    with pytest.raises(ModelCardError, match=None) as e:
        parse_card(json.dumps({**GOOD, **change}), "m.card.json")
    assert words in str(e.value) and str(e.value).startswith("m.card.json: ")


def test_not_json_and_not_an_object():
    with pytest.raises(ModelCardError, match="not valid JSON"):
        parse_card("{", "x")
    with pytest.raises(ModelCardError, match="must be a JSON object"):
        parse_card("[1]", "x")


def test_a_minimal_card_gets_the_user_assistant_format():
    card = parse_card(json.dumps(GOOD))
    assert card.to_dict()["chat"]["user"] == "User" and card.to_dict()["chat"]["end"] == "\n\n"


def test_beside():
    assert beside("/m/x.st", ".card.json") == "/m/x.card.json"
    assert beside("https://h/m/x.safetensors?download=1", ".vocab.txt") == "https://h/m/x.vocab.txt?download=1"
    assert beside("https://h/m/x", ".vocab.txt") is None
    assert beside("model.bin", ".card.json") is None


def test_a_model_without_a_card(tmp_path):
    (tmp_path / "m.st").write_bytes(b"")
    assert load_card(tmp_path / "m.st") is None
    (tmp_path / "m.card.json").write_text('{"name": "M"}')
    with pytest.raises(ModelCardError, match="'kind'"):
        load_card(tmp_path / "m.st")
