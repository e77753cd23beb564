"""``actgen-data`` on object stores and http(s): a remote input is fetched (and verified) into a
temporary folder first, a remote output is written to a temporary folder and then published
(files first, ``index.json`` last; ``actgen.shards.publish``). The commands themselves stay
local-folder code."""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from actgen.shards.errors import FormatError, relocated
from actgen.shards.publish import publish
from actgen.shards.reader import fetch, read_index
from actgen.shards.transfer import is_url


@contextlib.contextmanager
def local_copies(locations: Sequence[str]) -> Iterator[list[Path]]:
    """Each location as a local folder: itself, or a verified temporary copy of a URL (named by the
    URL's last part, which is what a merged set's index records of its sources)."""
    with tempfile.TemporaryDirectory(prefix="actgen-data-") as tmp:
        folders, copies = [], {}
        for i, location in enumerate(locations):
            if is_url(location):
                folder = Path(tmp) / f"{i:03d}" / (location.rstrip("/").rsplit("/", 1)[-1] or "set")
                try:
                    fetch(location, folder)
                except FormatError as e:
                    raise relocated(e, {folder: location}) from None
                copies[folder] = location
                folders.append(folder)
            else:
                folders.append(Path(location))
        try:
            yield folders
        except FormatError as e:   # an error about a copy names the URL it came from
            raise relocated(e, copies) from None


@contextlib.contextmanager
def local_output(output: str, overwrite: bool) -> Iterator[Path]:
    """A folder to write ``output`` into: itself, or a temporary one published to the URL after
    the body succeeds. A URL that already holds a finished set is refused before any work unless
    ``overwrite``."""
    if not is_url(output):
        yield Path(output)
        return
    if not overwrite:
        try:
            read_index(output)
        except FormatError:
            pass       # nothing finished there
        else:
            raise ValueError(f"{output} already holds a finished data set (pass --overwrite to replace it)")
    with tempfile.TemporaryDirectory(prefix="actgen-data-") as tmp:
        folder = Path(tmp) / "set"
        yield folder
        publish(folder, output, overwrite=overwrite)
