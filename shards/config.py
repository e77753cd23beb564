"""Typed YAML configs for both command-line programs: frozen dataclass trees loaded with OmegaConf.

The config file is the one format both programs read from people rather than from each other,
so it lives here with the others: unknown keys and wrong types are errors that name the file or
the ``--set`` override and the key; ``__post_init__`` range checks run on the result.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, TypeVar

T = TypeVar("T")


_CONFIG_SUFFIXES = (".yaml", ".yml")


def packaged_configs() -> list[str]:
    """Names of the configs shipped inside the package (``actgen.configs``), without suffix."""
    from importlib.resources import files

    try:
        root = files("actgen.configs")
    except ModuleNotFoundError:
        return []
    return sorted(p.name.rsplit(".", 1)[0] for p in root.iterdir() if p.name.endswith(_CONFIG_SUFFIXES))


def resolve_config_path(path: str | Path) -> Path:
    """``path`` when that file exists (a path always wins); else, for a bare name (``demo``,
    ``demo.yaml``) or ``configs/<name>``, the config of that name shipped with the package, so
    that ``--config demo`` works from any folder; else ``path`` unchanged (the caller reports it)."""
    given = Path(path)
    if given.is_file() or given.is_absolute():
        return given
    parts = given.parts
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "configs"):
        name = parts[-1] if parts[-1].endswith(_CONFIG_SUFFIXES) else parts[-1] + ".yaml"
        from importlib.resources import files

        try:
            candidate = files("actgen.configs") / name
        except ModuleNotFoundError:
            return given
        if candidate.is_file():
            return Path(str(candidate))
    return given


def load_structured(schema_cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
                    literal: Optional[Mapping[str, str]] = None) -> T:
    """Load a YAML file over ``schema_cls``'s defaults, then apply ``key.sub=value`` overrides,
    then ``literal`` values (paths from a command line, a request or a manifest: set as given,
    never parsed, quoted or interpolated by OmegaConf, so ``${`` and quotes in a name are kept).

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
        path = resolve_config_path(path)
        if not path.is_file():
            shipped = ", ".join(packaged_configs()) or "none"
            raise FileNotFoundError(f"{path}: config file not found, nor a config shipped with actgen by that name "
                                    f"(shipped: {shipped})")
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
            layer = _dotlist(overrides)
            merged = OmegaConf.merge(merged, layer)
        if literal:
            # A stand-in that OmegaConf never parses; the real value is set after conversion.
            where, layer = "literal paths", OmegaConf.from_dotlist([f"{k}={_LITERAL_STAND_IN}" for k in literal])
            merged = OmegaConf.merge(merged, layer)
    except OmegaConfBaseException as e:
        raise ValueError(f"{where}: {_omegaconf_message(e, schema, layer)}") from None
    try:
        cfg = OmegaConf.to_object(merged)  # runs every __post_init__ check
        for key, value in (literal or {}).items():
            cfg = _replace_path(cfg, key.split("."), str(value))   # ... and again, on the real value
        return cfg
    except OmegaConfBaseException as e:
        raise ValueError(f"{where}: {_omegaconf_message(e, schema, None)}") from None
    except ValueError as e:
        origin = " + ".join(filter(None, [str(path) if path is not None else "", "--set" if overrides else ""]))
        raise ValueError(f"{origin or 'defaults'}: {e}") from None


_LITERAL_STAND_IN = "actgen-literal-value"


def _dotlist(overrides: Sequence[str]):
    """``--set`` overrides as a config layer, one at a time so that a value YAML cannot parse is
    a ValueError naming its key (OmegaConf raises the YAML parser's own error)."""
    from omegaconf import OmegaConf

    layers = []
    for item in overrides:
        key, value = item.split("=", 1)
        try:
            layers.append(OmegaConf.from_dotlist([item]))
        except Exception as e:   # yaml.YAMLError and the grammar's errors
            if e.__class__.__module__.startswith("omegaconf"):
                raise
            raise ValueError(f"--set {key.strip()}: value {value!r} is not valid YAML "
                             f"({' '.join(str(e).split())[:120]})") from None
    return OmegaConf.merge(*layers) if layers else OmegaConf.create({})


def _replace_path(node: Any, keys: list[str], value: str) -> Any:
    """``node`` with the string field at ``keys`` set to ``value`` (frozen dataclasses rebuilt, so
    their checks run again)."""
    import dataclasses

    name = keys[0]
    if not dataclasses.is_dataclass(node) or name not in {f.name for f in dataclasses.fields(node)}:
        raise ValueError(f"config key {name!r}: not a field of {type(node).__name__}")
    child = value if len(keys) == 1 else _replace_path(getattr(node, name), keys[1:], value)
    return dataclasses.replace(node, **{name: child})


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
