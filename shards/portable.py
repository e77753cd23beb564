"""Paths as they may leave this machine. A data set is shared across teams, so what it records
(shard provenance, ``index.json``, the dataset card) names local files relative to the data set
when they are inside it, and by their last component otherwise: never by an absolute path of the
machine that built it. URLs, ``builtin:`` sources and hub ids are kept as they are."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def is_local_path(value: str) -> bool:
    """An absolute or home-relative path, or a relative one with a folder part that exists here."""
    if not value or "://" in value or value.startswith("builtin:"):
        return False
    if value.startswith(("/", "~")):
        return True
    return "/" in value and Path(value).exists()


def portable_path(value: str, root: str | Path | None = None) -> str:
    """``value`` relative to ``root`` when it is a local path inside it, its last component when it
    is a local path elsewhere, else unchanged."""
    if not is_local_path(value):
        return value
    path = Path(value).expanduser().absolute()
    if root is not None:
        try:
            return path.relative_to(Path(root).expanduser().absolute()).as_posix() or "."
        except ValueError:
            pass
    return path.name


def portable(value: Any, root: str | Path | None = None) -> Any:
    """``value`` (a JSON-like structure) with every local path made portable (:func:`portable_path`)."""
    if isinstance(value, str):
        return portable_path(value, root)
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, root) for v in value]
    return value
