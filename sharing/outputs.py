"""Where ``actgen-data merge``, ``filter`` and ``browse`` write: never over a source, never
through a link, and an overwritten output holds only what the new index lists.

Each command builds its output in a hidden sibling folder and swaps it into place only once it is
complete (``shards.atomic.atomic_directory``), so an interrupted or failed command leaves the old
output as it was, and a replaced one keeps none of its old files.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

from actgen.shards.atomic import atomic_directory

# What may be replaced with --overwrite: a folder that holds one of these (an earlier output of
# the same kind) or nothing at all. Anything else is a user's folder and is never replaced.
MARKERS = {"data set": "index.json", "gallery": "index.html",
           "imported data set": "state.json"}     # what datasets' save_to_disk writes


# Spellings of one store: a bucket read as s3a:// is the bucket written as s3://.
_SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs", "https": "http"}


def location_key(location: str | Path) -> tuple[str, tuple[str, ...]]:
    """``(store, path parts)`` of a location, the same for every spelling of it: a local path
    resolved (links followed), a URL with its scheme's aliases folded, its host lower-cased, and
    ``.``, ``..``, repeated and trailing slashes removed."""
    import posixpath
    from urllib.parse import urlsplit

    from actgen.shards.transfer import is_url

    text = str(location)
    if not is_url(text):
        return "file", Path(text).expanduser().resolve().parts
    parts = urlsplit(text)
    scheme = _SCHEME_ALIASES.get(parts.scheme.lower(), parts.scheme.lower())
    path = posixpath.normpath("/" + parts.path.lstrip("/")).strip("/")
    host = parts.netloc.lower() if scheme == "http" else parts.netloc
    return f"{scheme}://{host}", tuple(p for p in path.split("/") if p)


def check_locations(output: str | Path, sources: Sequence[str | Path]) -> None:
    """ValueError when ``output`` is one of ``sources``, lies inside one or contains one, for every
    kind of location (folders, ``s3://``, ``gs://``, ``hf://``, http(s)), however it is spelled."""
    store, out = location_key(output)
    for source in sources:
        src_store, src = location_key(source)
        if src_store != store:
            continue
        if out == src or out[:len(src)] == src or src[:len(out)] == out:
            relation = "is" if out == src else "lies inside" if out[:len(src)] == src else "contains"
            raise ValueError(f"output {output} {relation} the source {source}; write to a location outside every "
                             "source (a source is never replaced)")


def check_output(output: str | Path, sources: Sequence[str | Path], overwrite: bool, kind: str) -> Path:
    """``output`` as an absolute path, after the checks that keep sources and user files safe.

    Raises:
        ValueError: the output is a source, lies inside one or contains one (the message suggests
            another folder, never a flag).
        FileExistsError: it already holds a ``kind`` and ``overwrite`` is false.
        NotADirectoryError: it is a file.
        ValueError: it holds files that are not a ``kind`` (never replaced, even with overwrite).
    """
    out = Path(output).absolute()
    check_locations(output, sources)
    if out.is_symlink():
        raise ValueError(f"output {output} is a symbolic link; give the real folder (nothing is written through "
                         "a link)")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {output} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        marker = MARKERS[kind]
        a = "an" if kind[0] in "aeiou" else "a"
        if not (out / marker).is_file():
            raise ValueError(f"output {output} holds files that are not {a} {kind} (no {marker}); choose an empty "
                             "or new folder")
        if not overwrite:
            raise FileExistsError(f"{out / marker}: {a} {kind} is already here; pass --overwrite to replace it, "
                                  "or choose another folder")
    return out


@contextlib.contextmanager
def replacing(output: Path) -> Iterator[Path]:
    """A fresh hidden sibling folder to fill; on success it replaces ``output`` whole."""
    with atomic_directory(output) as staging:
        yield staging
