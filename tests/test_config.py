"""Typed configs: unknown keys and wrong types fail loudly, naming the key path."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from mssdf.config import ConfigError, deep_merge, from_dict, parse_sets, replace, to_dict
from mssdf.masking import MaskingConfig


@dataclass(frozen=True)
class Inner:
    rate: float = 0.1
    kind: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    steps: int = 3
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=Inner)
    table: dict[str, Inner] = field(default_factory=dict)
    maybe: int | None = None
    pair: tuple[float, str] = (0.5, "a")


def test_round_trip_and_coercions():
    cfg = from_dict(Outer, {"steps": 5, "sizes": [3, 4], "inner": {"rate": 1}, "table": {"k": {"kind": "b"}}})
    assert cfg == Outer(steps=5, sizes=(3, 4), inner=Inner(rate=1.0), table={"k": Inner(kind="b")})
    assert from_dict(Outer, to_dict(cfg)) == cfg
    assert from_dict(Outer, {"pair": [1, "b"]}).pair == (1.0, "b")
    assert replace(cfg, steps=9).steps == 9


@pytest.mark.parametrize(
    "data, message",
    [
        ({"stepz": 1}, r"unknown key\(s\) pretrain.stepz"),
        ({"inner": {"rat": 1}}, r"unknown key\(s\) pretrain.inner.rat"),
        ({"steps": "3"}, r"pretrain.steps: expected an integer"),
        ({"steps": True}, r"pretrain.steps: expected an integer"),
        ({"inner": {"kind": "c"}}, r"pretrain.inner.kind: 'c' is not one of \['a', 'b'\]"),
        ({"sizes": "12"}, r"pretrain.sizes: expected a list"),
        ({"table": {"k": {"rate": "fast"}}}, r"pretrain.table.k.rate: expected a number"),
        ({"maybe": 1.5}, r"pretrain.maybe"),
        ({"pair": [1, 2]}, r"pretrain.pair\[1\]: expected a string"),
        ({"pair": [1]}, r"pretrain.pair: expected 2 items"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data, "pretrain")


def test_validation_errors_in_post_init_become_config_errors():
    with pytest.raises(ConfigError, match="masking: ratio must be in"):
        from_dict(MaskingConfig, {"ratio": 1.5}, "masking")
    with pytest.raises(ConfigError, match=r"masking.substitution.every"):
        from_dict(MaskingConfig, {"substitution": {"every": "ten"}}, "masking")


def test_deep_merge_recurses_into_mappings_and_replaces_the_rest():
    base = {"a": {"b": 1, "c": {"d": 2}}, "l": [1, 2], "s": "x"}
    merged = deep_merge(base, {"a": {"c": {"e": 3}}, "l": [3], "s": {"now": "a mapping"}})
    assert merged == {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "l": [3], "s": {"now": "a mapping"}}
    assert base == {"a": {"b": 1, "c": {"d": 2}}, "l": [1, 2], "s": "x"}  # inputs untouched
    override = {"a": {"x": [1]}}
    deep_merge({}, override)["a"]["x"].append(2)
    assert override == {"a": {"x": [1]}}  # the result shares nothing with the inputs


def test_parse_sets_builds_nested_mappings_of_yaml_values():
    assert parse_sets(["optim.lr=1e-3", "optim.betas=[0.9, 0.95]", "a.b.c=x=y", "flag=true", "none=", "n=null"]) == {
        "optim": {"lr": 1e-3, "betas": [0.9, 0.95]}, "a": {"b": {"c": "x=y"}}, "flag": True, "none": None, "n": None}
    assert isinstance(parse_sets(["lr=1e-3"])["lr"], float)  # YAML 1.2 floats, as DVC reads params.yaml
    assert parse_sets([]) == {}


@pytest.mark.parametrize("items, message", [
    (["optim.lr"], r"--set 'optim.lr': expected key=value"),
    (["a=1", "a.b=2"], r"--set 'a.b=2': a is already a value"),
    (["a..b=1"], r"--set 'a..b=1': empty key component"),
    (["=1"], r"--set '=1': empty key component"),
])
def test_parse_sets_refuses_malformed_items_naming_them(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_sets(items)


def test_pretrain_config_keeps_reexporting_the_helpers():
    import mssdf.pretrain.config as pretrain_config

    assert pretrain_config.deep_merge is deep_merge and pretrain_config.parse_sets is parse_sets
    assert {"deep_merge", "parse_sets"} <= set(pretrain_config.__all__)
