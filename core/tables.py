"""Typed configuration: TOML tables loaded into frozen dataclasses, checked key by key.

Unknown keys, wrong types and out-of-range values raise ConfigError naming the key (with the
table it sits in), so a typo never silently falls back to a default. Ranges are declared on
the fields (``bounded(default, min=..., max=...)``), not in ad-hoc checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from flaudit.core.errors import ConfigError

C = TypeVar("C")


def bounded(default: Any, *, min: float | None = None, max: float | None = None,
            exclusive_min: bool = False, allow_inf: bool = False, doc: str = "") -> Any:
    """A dataclass field whose numeric value (when not None) must lie in [min, max]. Every float
    must be finite (NaN never passes) unless ``allow_inf`` says infinity means something."""
    meta = {"min": min, "max": max, "exclusive_min": exclusive_min, "allow_inf": allow_inf, "doc": doc}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp``; returns it in the annotated form."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return origin(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}: expected a path string, got {value!r}")
        return Path(value).expanduser()
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def _check_range(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_range(item, meta, f"{key}[{i}]")
        return
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and not meta.get("allow_inf"))):
        raise ConfigError(f"{key}: must be a finite number, got {value}")
    low, high = meta.get("min"), meta.get("max")
    if low is not None and (value <= low if meta.get("exclusive_min") else value < low):
        relation = ">" if meta.get("exclusive_min") else ">="
        raise ConfigError(f"{key}: must be {relation} {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{key}: must be <= {high}, got {value}")


def from_mapping(cls: type[C], data: Mapping[str, Any], section: str) -> C:
    """Builds dataclass ``cls`` from a TOML table, rejecting unknown keys and bad values."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"[{section}] must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"[{section}] unknown key {key!r}{hint}; known keys: {', '.join(sorted(fields))}"
            )
    values = {}
    for name, value in data.items():
        key = f"{section}.{name}"
        values[name] = _coerce(value, hints[name], key)
        _check_range(values[name], fields[name].metadata, key)
    return cls(**values)


MAX_CONFIG_BYTES = 1 << 20  # a config is a page of text; anything larger is not one


def read_toml(path: Path) -> dict[str, Any]:
    """Parses a TOML file; a missing, unreadable, oversized, non-UTF-8 or malformed file is a
    ConfigError naming it."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; it is not a config")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {one_line(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to be a config") from None


def one_line(text: str, limit: int = 300) -> str:
    """``text`` folded onto one line, at most ``limit`` characters (error messages)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
