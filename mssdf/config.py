"""Typed config objects built from plain mappings (``params.yaml`` sections, notebook
parameters), in the spirit of nanoGPT's configurator: an unknown key or a value of the
wrong type fails loudly, naming the full key path (``model.embed_dim``), before any
computation starts.

Config classes are frozen dataclasses; :func:`from_dict` builds one recursively
(nested dataclasses, ``dict[str, X]``, ``list[X]``, ``tuple[X, ...]``, ``X | None``,
``Literal[...]``) and :func:`to_dict` turns it back into JSON/YAML-ready data.

Plain mappings are combined with :func:`deep_merge` (nested mappings merged key by key)
and command-line ``--set key.sub=value`` overrides become nested mappings with
:func:`parse_sets` (values parsed as YAML by :func:`yaml_load`).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A parameter is unknown, missing or of the wrong type/value."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (light, lossless coercions only)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, path)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{path}: {value!r} matches none of {_type_name(tp)} ({'; '.join(errors)})")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (dict, Mapping) or tp in (dict,):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        args = get_args(tp) or (Any, Any)
        return {_coerce(k, args[0], f"{path}.<key>"): _coerce(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``; unknown keys and bad types raise.

    Args:
        cls: a dataclass type.
        data: the mapping (missing keys take the dataclass defaults).
        path: prefix for error messages, e.g. ``"pretrain.model"``.

    Raises:
        ConfigError: naming the full key path of the first offending entry.
    """
    data = dict(data or {})
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], prefix + name)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {prefix + name} for {cls.__name__}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            head = str(err).split(":", 1)[0].split(".")[0].split("[")[0]
            if path and head in fields:  # a check naming its own field: give it the full key path
                raise ConfigError(f"{prefix}{err}") from err
            raise
        raise ConfigError(f"{path or cls.__name__}: {err}") from err


def to_dict(obj: Any) -> Any:
    """Turn a config dataclass (recursively) into plain JSON/YAML-ready data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def replace(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` that also validates the changed values."""
    return from_dict(type(obj), {**to_dict(obj), **changes})


class _Loader(yaml.SafeLoader):
    """PyYAML safe loader reading ``1e-3`` as a float (YAML 1.2, as DVC's ruamel does)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text safely (floats as YAML 1.2)."""
    return yaml.load(text, Loader=_Loader)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``, recursing into nested mappings (inputs untouched).

    A value that is not a mapping on both sides (a list, a scalar) is replaced whole.
    """
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "data.modalities=[rgb]"]`` → nested mapping (values parsed as YAML).

    Values go through :func:`yaml_load` (``1e-3`` is a float, ``[a, b]`` a list, ``null``
    or an empty value None).

    Raises:
        ConfigError: ``--set <item>: ...`` for an item without ``=``, with an empty key
            component, or setting a key below one already given a value.
    """
    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        value = yaml_load(raw) if raw.strip() else None
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty key component in {key.strip()!r}")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p} is already a value")
        node[parts[-1]] = value
    return out


__all__ = ["ConfigError", "from_dict", "to_dict", "replace", "yaml_load", "deep_merge", "parse_sets"]


def load_mapping(path: str | Path | None = None, section: str | None = None, sets: list[str] | None = None) -> dict[str, Any]:
    """A YAML file's mapping (optionally its ``section``, e.g. ``pretrain`` of ``params.yaml``)
    with ``key=value`` overrides (:func:`parse_sets`) merged in; every CLI reads its run this way.

    Raises:
        ConfigError: naming a missing file, a missing section, or a non-mapping.
    """

    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        loaded = yaml_load(p.read_text()) or {}
        if section:
            if section not in loaded:
                raise ConfigError(f"{p}: no section {section!r} (sections: {sorted(loaded)})")
            loaded = loaded[section] or {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{p}: expected a mapping at the top{' of ' + section if section else ''}")
        data = dict(loaded)
    return deep_merge(data, parse_sets(sets or []))
