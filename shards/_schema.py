"""JSON <-> frozen dataclass records, validated field by field.

Every format in this package is a small dataclass tree; this module turns one into plain JSON
values and back, raising :class:`FormatError` that names the file and the field path
(``samples[3].label``) and what was expected.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import FormatError

T = TypeVar("T")


def to_jsonable(obj: Any) -> Any:
    """Dataclasses to dicts and tuples to lists, recursively."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    return obj


def _format_first(value: Any) -> Any:
    # Put "format"/"format_version" first so a reader sees what a file is on its first lines.
    if isinstance(value, dict):
        head = {k: value[k] for k in ("format", "format_version") if k in value}
        return {**head, **{k: _format_first(v) for k, v in value.items() if k not in head}}
    if isinstance(value, list):
        return [_format_first(v) for v in value]
    return value


def dumps(obj: Any) -> str:
    """Stable, human-readable JSON of a record."""
    return json.dumps(_format_first(to_jsonable(obj)), indent=2, ensure_ascii=False) + "\n"


def jsonable(value):
    """Non-finite floats become strings ('inf'), so provenance is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def utc_now() -> str:
    """Current UTC time, ISO-8601 with a 'Z' suffix, whole seconds."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def is_int(value: Any) -> bool:
    """An integer as JSON means one: ``int``, not ``bool`` (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def load_json(text: str | bytes, where: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(where, f"not valid JSON ({e})") from None


def read_json_file(path: str | Path) -> Any:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FormatError(str(path), "file not found") from None
    return load_json(data, str(path))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(tp: Any, value: Any, where: str, field: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(expected: str) -> FormatError:
        return FormatError(where, f"field '{field}' must be {expected}, got {_describe(value)}")

    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, where, field)
        raise TypeError(f"unsupported union {tp}")  # a schema bug, not a file problem
    if dataclasses.is_dataclass(tp):
        return from_jsonable(tp, value, where, field)
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if not is_int(value):
            raise fail("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise fail("an object")
        if not args:
            return dict(value)
        return {k: _convert(args[1], v, where, f"{field}.{k}") for k, v in value.items()}
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise fail("a list")
        if not args:
            return list(value)
        return [_convert(args[0], v, where, f"{field}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list):
            raise fail(f"a list of {len(args)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where, f"{field}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail(f"a list of {len(args)} values")
        return tuple(_convert(a, v, where, f"{field}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    raise TypeError(f"unsupported schema type {_type_name(tp)} for field {field}")


def from_jsonable(cls: type[T], data: Any, where: str, prefix: str = "") -> T:
    """Build dataclass ``cls`` from parsed JSON, rejecting unknown, missing and mistyped fields."""
    label = prefix or "(top level)"
    if not isinstance(data, dict):
        raise FormatError(where, f"field '{label}' must be an object, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(f"'{prefix + '.' if prefix else ''}{k}'" for k in unknown)
        raise FormatError(where, f"unknown field(s) {names}; expected only {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        path = f"{prefix}.{name}" if prefix else name
        if name not in data:
            has_default = (f.default is not dataclasses.MISSING
                           or f.default_factory is not dataclasses.MISSING)
            if has_default:
                continue
            raise FormatError(where, f"missing field '{path}'")
        kwargs[name] = _convert(hints[name], data[name], where, path)
    return cls(**kwargs)


def check_format(where: str, data: Any, name: str, version: int, prefix: str = "") -> None:
    """FormatError unless ``data`` declares format ``name`` at a version this code can read."""
    if not isinstance(data, dict):
        return  # from_jsonable reports the shape problem
    dot = f"{prefix}." if prefix else ""
    got = data.get("format")
    if got != name:
        raise FormatError(where, f"field '{dot}format' must be {name!r}, got {_describe(got)}")
    got_version = data.get("format_version")
    if not is_int(got_version):
        raise FormatError(where, f"field '{dot}format_version' must be an integer, got {_describe(got_version)}")
    if got_version > version:
        raise FormatError(where, f"format_version {got_version} is newer than this reader "
                                 f"(supports up to {version}); upgrade actgen")
    if got_version < 1:
        raise FormatError(where, f"field '{dot}format_version' must be >= 1, got {got_version}")


def check_finite(where: str, field: str, value: float) -> None:
    if not math.isfinite(value):
        raise FormatError(where, f"field '{field}' must be finite, got {value}")
