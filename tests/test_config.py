"""Model configs: strings from ``--set`` become typed values; bad keys and values are ConfigErrors."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import pytest

from lmrec.errors import ConfigError
from lmrec.models import MODELS, ModelConfig, model_class


@dataclass
class DemoConfig(ModelConfig):
    size: int = 8
    rate: float = 0.1
    flag: bool = False
    layers: tuple[int, ...] = (64, 32)
    limit: int | None = None
    label: str = "x"

    def validate(self) -> None:
        if self.size < 1:
            raise ConfigError("demo: size must be >= 1")


def test_strings_are_converted_to_field_types() -> None:
    cfg = DemoConfig.from_dict(
        {"size": "16", "rate": "1e-3", "flag": "yes", "layers": "64,32,16", "limit": "12", "label": "abc"}
    )
    assert cfg == DemoConfig(size=16, rate=0.001, flag=True, layers=(64, 32, 16), limit=12, label="abc")
    assert type(cfg.size) is int and type(cfg.rate) is float and type(cfg.layers) is tuple
    assert all(type(v) is int for v in cfg.layers)


@pytest.mark.parametrize("text", ["true", "True", "TRUE", "1", "yes", "on"])
def test_true_spellings(text: str) -> None:
    assert DemoConfig.from_dict({"flag": text}).flag is True


@pytest.mark.parametrize("text", ["false", "False", "0", "no", "off", "OFF"])
def test_false_spellings(text: str) -> None:
    assert DemoConfig(flag=True).updated({"flag": text}).flag is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [("64,32", (64, 32)), ("(128, 64)", (128, 64)), ("[8]", (8,)), ("8", (8,)), ([4, 2], (4, 2)), ("[]", ())],
)
def test_tuple_spellings(value: Any, expected: tuple[int, ...]) -> None:
    assert DemoConfig.from_dict({"layers": value}).layers == expected


@pytest.mark.parametrize("value", ["None", "none", "null", None])
def test_none_spellings_for_optional_fields(value: Any) -> None:
    assert DemoConfig(limit=5).updated({"limit": value}).limit is None


def test_whole_float_is_accepted_for_an_int() -> None:
    assert DemoConfig.from_dict({"size": 3.0}).size == 3


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("size", "abc", "'abc'"),
        ("size", "2.5", "'2.5'"),
        ("size", 2.5, "2.5"),
        ("rate", "fast", "'fast'"),
        ("flag", "maybe", "'maybe'"),
        ("layers", "64,x", "'x'"),
        ("limit", "many", "'many'"),
    ],
)
def test_bad_value_names_the_option_and_the_value(key: str, value: Any, shown: str) -> None:
    with pytest.raises(ConfigError, match=f"option '{key}' needs a") as info:
        DemoConfig.from_dict({key: value})
    assert str(info.value).endswith(f"got {shown}")


def test_unknown_key_names_the_key_and_lists_options() -> None:
    with pytest.raises(ConfigError, match="sise") as info:
        DemoConfig.from_dict({"sise": "3"})
    assert "size" in str(info.value) and "DemoConfig" in str(info.value)


def test_validate_runs_on_converted_values() -> None:
    with pytest.raises(ConfigError, match="size must be >= 1"):
        DemoConfig.from_dict({"size": "0"})
    with pytest.raises(ConfigError, match="reg"):
        model_class("ease").config_class.from_dict({"reg": "-1"})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_config_json_round_trip(name: str) -> None:
    klass = model_class(name).config_class
    default = klass()
    back = klass.from_dict(json.loads(json.dumps(default.to_dict())))
    assert back == default
    for f in dataclasses.fields(default):
        assert type(getattr(back, f.name)) is type(getattr(default, f.name)), f.name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_default_value_survives_the_command_line(name: str) -> None:
    """``--set key=str(value)`` for every field (``part.key=str(value)`` for a part's options)
    gives back the default config."""
    klass = model_class(name).config_class
    default = klass()
    as_strings = {}
    for f in dataclasses.fields(default):
        value = getattr(default, f.name)
        if isinstance(value, ModelConfig):
            as_strings.update({f"{f.name}.{k}": str(v) for k, v in value.to_dict().items()})
        else:
            as_strings[f.name] = str(value)
    if isinstance(default, model_class("ncf").config_class):
        assert as_strings["mlp"] == "(64, 32, 16)"
    assert klass.from_dict(as_strings) == default


def test_ncf_mlp_from_a_set_string() -> None:
    cfg = model_class("ncf").config_class.from_dict({"mlp": "64,32"})
    assert cfg.mlp == (64, 32)
    with pytest.raises(ConfigError, match="ncf"):
        model_class("ncf").config_class.from_dict({"mlp": "63,32"})  # first size must be even


def test_updated_changes_one_field_and_keeps_the_rest() -> None:
    base = DemoConfig(size=4, layers=(2,))
    new = base.updated({"rate": "0.5"})
    assert new == DemoConfig(size=4, layers=(2,), rate=0.5)
    assert base.rate == 0.1


def test_a_run_saved_when_every_config_had_item_features_still_loads(tmp_path: Any) -> None:
    """Until item_features moved to the text-reading models, every saved config carried
    ``"item_features": "text"``; such a model directory loads (the key meant nothing), while a
    real feature spec on a model that reads no features is still refused."""
    from lmrec.models import load_model
    from tests.conftest import checkerboard

    data = checkerboard(n_users=12, n_items=10, per_user=4)
    path = model_class("pop")().fit(data).save(tmp_path / "model")
    meta = json.loads((path / "config.json").read_text())
    meta["config"]["item_features"] = "text"
    (path / "config.json").write_text(json.dumps(meta))
    assert load_model(path).n_items == 10
    meta["config"]["item_features"] = "text,genres"
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="item_features"):
        load_model(path)
