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
MARKERS = {"data set": "index.json", "gallery": "index.html"}


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
    real = out.resolve()
    for source in sources:
        src = Path(source).resolve()
        if real == src or real.is_relative_to(src) or src.is_relative_to(real):
            relation = "is" if real == src else "lies inside" if real.is_relative_to(src) else "contains"
            raise ValueError(f"output {output} {relation} the source {source}; write to a folder outside every "
                             "source (a source is never replaced)")
    if out.is_symlink():
        raise ValueError(f"output {output} is a symbolic link; give the real folder (nothing is written through "
                         "a link)")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {output} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        marker = MARKERS[kind]
        if not (out / marker).is_file():
            raise ValueError(f"output {output} holds files that are not a {kind} (no {marker}); choose an empty "
                             "or new folder")
        if not overwrite:
            raise FileExistsError(f"{out / marker}: a {kind} is already here; pass --overwrite to replace it, "
                                  "or choose another folder")
    return out


@contextlib.contextmanager
def replacing(output: Path) -> Iterator[Path]:
    """A fresh hidden sibling folder to fill; on success it replaces ``output`` whole."""
    with atomic_directory(output) as staging:
        yield staging
