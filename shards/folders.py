"""Image folders before ``datasets`` reads them: a listing with bounds (files, non-images, seconds),
so that a path naming a home or system folder fails in seconds, and the advice to convert a large
folder once (``actgen-data import``) instead of listing it in every process that opens it."""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from pathlib import Path
from typing import Optional

from .errors import FormatError

_logger = logging.getLogger("actgen.shards.sources")


# Bounds of the walk before an image folder is handed to `datasets` (which would crawl a folder
# of any size, however long it takes): a path that names a home or system folder by mistake, or
# on purpose in a request, fails in seconds instead of keeping a server busy for minutes.
MAX_FOLDER_FILES = 5_000_000
MAX_FOLDER_SECONDS = 120.0
# An image folder holds images (and perhaps a metadata file or a few): past this many other files,
# and more of them than images, a folder is a home or system folder named by mistake, refused
# in the seconds its listing takes instead of the minutes `datasets` would crawl it.
MAX_OTHER_FILES = 1000
LARGE_FOLDER_FILES = 100_000      # past this, opening the folder every time costs minutes: say so
FOLDER_SECONDS_PER_FILE = 0.9e-3  # datasets' imagefolder indexing, measured at 10k-40k files (linear)
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"})


# A tighter bound on the listing, set by a server for the folders its requests name: a request
# is answered (or refused) in seconds, whatever folder it names.
LISTING_SECONDS: contextvars.ContextVar[Optional[float]] = contextvars.ContextVar("listing_seconds", default=None)


@contextlib.contextmanager
def listing_bound(seconds: Optional[float]):
    """Within this block, listing an image folder is refused past ``seconds`` (None: the default,
    MAX_FOLDER_SECONDS)."""
    token = LISTING_SECONDS.set(seconds)
    try:
        yield
    finally:
        LISTING_SECONDS.reset(token)


def check_folder_size(directory: Path, max_files: Optional[int] = None, max_seconds: Optional[float] = None) -> int:
    """The number of files under ``directory`` (links not followed); FormatError as soon as there
    are more than ``max_files``, the walk takes longer than ``max_seconds``, or the folder holds
    more than MAX_OTHER_FILES files that are not images, and more of them than images."""
    import time

    max_files = MAX_FOLDER_FILES if max_files is None else max_files
    if max_seconds is None:
        bound = LISTING_SECONDS.get()
        max_seconds = MAX_FOLDER_SECONDS if bound is None else bound
    deadline = time.monotonic() + max_seconds
    count = others = 0
    for _root, _dirs, files in os.walk(directory, followlinks=False):
        count += len(files)
        others += sum(1 for f in files if os.path.splitext(f)[1].lower() not in _IMAGE_SUFFIXES)
        if count > max_files:
            raise FormatError(str(directory), f"holds more than {max_files:,} files: not read as an image folder "
                                              "(name the data set's own folder)")
        if others > MAX_OTHER_FILES and others > count - others:
            raise FormatError(str(directory), f"holds {others:,} files that are not images (of {count:,} so far): "
                                              "not an image folder (name the data set's own folder)")
        if time.monotonic() > deadline:
            raise FormatError(str(directory), f"listing its files took over {max_seconds:g} s ({count:,} so far): "
                                              "not read as an image folder (name the data set's own folder, or "
                                              "convert it once: actgen-data import FOLDER ARROW_FOLDER)")
    if count > LARGE_FOLDER_FILES:
        _logger.warning("%s: an image folder of %s files is listed and indexed again by every process that opens "
                        "it (about %d s at this size, each time); convert it once (actgen-data import %s "
                        "ARROW_FOLDER) and name that folder: it opens in about a second", directory, f"{count:,}",
                        round(count * FOLDER_SECONDS_PER_FILE), directory)
    return count
