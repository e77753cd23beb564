"""Publish a finished local data set to a remote location (``s3://``, ``gs://``, ``hf://``, any
fsspec URL): its files go first, ``index.json`` last, so a reader at the destination never sees
an index whose shards are not all there (each object store write is itself all or nothing).

What is published is what travels (shards, ``_info.json``, the card, the contact sheet): not the
builder's resume record (``build.json``, which holds local paths) nor hidden temporaries.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from .errors import FormatError
from .transfer import filesystem, is_url
from .verify import verify
from .writer import INDEX_FILE

_logger = logging.getLogger(__name__)

NOT_PUBLISHED = frozenset({"build.json", "build_status.json"})


def publish(directory: str | Path, url: str, overwrite: bool = False) -> int:
    """Verify the data set in ``directory`` and upload it to ``url``; return the files uploaded.

    Raises:
        ValueError: ``url`` is not a remote location, or already holds a finished data set and
            ``overwrite`` is off.
        FormatError: the local data set does not verify, or the store refuses a write.
        ConnectionError: the store cannot be reached.
    """
    directory = Path(directory)
    if not is_url(url) or url.startswith(("http://", "https://")):
        raise ValueError(f"publish: {url} is not an object-store URL (s3://, gs://, hf://, ...); "
                         "copy to a folder with actgen-data merge or fetch instead")
    report = verify(directory)
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and not p.is_symlink() and not p.name.startswith(".")
                   and p.name not in NOT_PUBLISHED and p.name != INDEX_FILE)
    fs, root = filesystem(url)
    index_path = f"{root.rstrip('/')}/{INDEX_FILE}"
    started = time.monotonic()
    try:
        if fs.exists(index_path):
            if not overwrite:
                raise ValueError(f"publish: {url} already holds a finished data set (pass overwrite to replace it)")
            fs.rm_file(index_path)      # unfinished from here on, for every reader
        for path in files:
            fs.put_file(str(path), f"{root.rstrip('/')}/{path.name}")
        fs.put_file(str(directory / INDEX_FILE), index_path)
    except (ValueError, FormatError):
        raise
    except FileNotFoundError as e:     # s3fs: a bucket that does not exist
        raise FormatError(url, f"no such bucket or place ({' '.join(str(e).split())})") from None
    except PermissionError as e:
        raise FormatError(url, f"the store refuses the write ({' '.join(str(e).split())})") from None
    except OSError as e:
        raise ConnectionError(f"{url}: cannot write ({type(e).__name__}: {' '.join(str(e).split())})") from None
    _logger.info("published %s -> %s: %d samples, %d files in %.1f s", directory, url, report.num_samples,
                 len(files) + 1, time.monotonic() - started)
    return len(files) + 1
