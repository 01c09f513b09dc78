"""Typed configs: unknown keys and wrong types fail loudly, naming the key path."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from mssdf.config import ConfigError, from_dict, replace, to_dict
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
