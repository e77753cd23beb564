"""Typed YAML configs for both command-line programs: frozen dataclass trees loaded with OmegaConf.

The config file is the one format both programs read from people rather than from each other,
so it lives here with the others: unknown keys and wrong types are errors that name the file or
the ``--set`` override and the key; ``__post_init__`` range checks run on the result.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


def load_structured(schema_cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load a YAML file over ``schema_cls``'s defaults, then apply ``key.sub=value`` overrides.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown key, a mistyped value, a malformed override or a value out of
            range; the message names the file or the overrides, and the key.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = OmegaConf.structured(schema_cls)
    layers = [schema]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        try:
            loaded = OmegaConf.load(path)
        except Exception as e:  # yaml.YAMLError and friends; report the file, not a traceback
            text = " ".join(str(e).split())
            if text.startswith("Invalid loaded object type"):   # a bare number or boolean
                raise ValueError(f"{path}: expected a mapping of config keys at the top level, got "
                                 f"{text.rsplit(' ', 1)[-1]}") from None
            raise ValueError(f"{path}: not a valid YAML config ({text})") from None
        if not isinstance(loaded, DictConfig):
            raise ValueError(f"{path}: expected a mapping of config keys at the top level, got a list")
        layers.append(loaded)
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0].strip()]
    if bad:
        raise ValueError(f"override {bad[0]!r}: expected key.sub=value")
    where, layer = (str(path), layers[-1]) if path is not None else ("defaults", None)
    try:
        merged = OmegaConf.merge(*layers)
        if overrides:
            where = "--set overrides"
            layer = OmegaConf.from_dotlist(list(overrides))
            merged = OmegaConf.merge(merged, layer)
    except OmegaConfBaseException as e:
        raise ValueError(f"{where}: {_omegaconf_message(e, schema, layer)}") from None
    try:
        return OmegaConf.to_object(merged)  # runs every __post_init__ check
    except OmegaConfBaseException as e:
        raise ValueError(f"{where}: {_omegaconf_message(e, schema, None)}") from None
    except ValueError as e:
        origin = " + ".join(filter(None, [str(path) if path is not None else "", "--set" if overrides else ""]))
        raise ValueError(f"{origin or 'defaults'}: {e}") from None


def check_value(ok: bool, key: str, value: Any, expected: str) -> None:
    """A range check for ``__post_init__``: ValueError naming the key, the value and what was expected."""
    if not ok:
        raise ValueError(f"config key '{key}' = {value!r}: expected {expected}")


def to_dict(cfg: Any) -> dict:
    """A config dataclass as plain containers (what gets written and compared)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg))


def to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (sorted)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _omegaconf_message(e: Exception, schema: Any, layer: Any) -> str:
    """OmegaConf's message with the offending key folded in, on one line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    head = lines[0] if lines else type(e).__name__
    key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), "")
    if not key and layer is not None:
        # OmegaConf names no key for a bad list element (and leaves '$VALUE' in the text):
        # find the key by merging the layer's entries one at a time.
        key, value = _locate_bad_entry(schema, layer)
        head = re.sub(r"Value '\$VALUE' of type '\$VALUE_TYPE'", "an element", head)
        if key:
            return f"key '{key}' = {value!r}: {head}"
    return head if (not key or key in head) else f"key '{key}': {head}"


def _locate_bad_entry(schema: Any, layer: Any) -> tuple[str, Any]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    def leaves(node: Any, prefix: str):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from leaves(v, f"{prefix}{k}.")
        else:
            yield prefix.rstrip("."), node

    for dotted, value in leaves(OmegaConf.to_container(layer), ""):
        nested: Any = value
        for part in reversed(dotted.split(".")):
            nested = {part: nested}
        try:
            OmegaConf.merge(schema, OmegaConf.create(nested))
        except OmegaConfBaseException:
            return dotted, value
    return "", None
