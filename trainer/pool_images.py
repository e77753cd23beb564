"""The pool's synthetic data sets as training images: each set indexed once in a process, and its
index kept in the run folder so that a process that starts (a resume, every rank) skips the scan.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from .samples import _load

_logger = logging.getLogger(__name__)


# The pool's data sets, each indexed once in this process (scanning a set's tars costs about
# 0.15 ms an image): the loader is rebuilt whenever a round joins, and would otherwise re-index
# every earlier round each time. A set whose index.json changed (another inode, size or mtime) is
# indexed again.
_INDEXED: dict[str, tuple[tuple, object]] = {}


SAMPLE_INDEX_FILE = ".actgen-sample-index.json"
"""Beside a pool set's shards in the run folder: its sample index, so that a process that starts
(a resume, every rank of a run) reads it instead of scanning the set's tars again."""
_SAMPLE_INDEX_MAX_BYTES = 1 << 30


def shard_index(directory: str | Path, persist: bool = False):
    """The ``ShardRandomAccess`` of a local data set, built once per process and data set.

    With ``persist`` (the run's own pool sets) the index is also kept in the set's folder
    (:data:`SAMPLE_INDEX_FILE`) and taken from there by a later process while the set's files are
    unchanged (their stamps: size, mtime, ctime, inode; a record that does not check out is
    ignored and the set scanned again). The record is trusted like ``last.pt``: it lives in the
    run folder, beside shards whose sha256 was checked when they joined.
    """
    from actgen.shards.reader import ShardRandomAccess
    from actgen.shards.writer import INDEX_FILE, file_stamp

    key = str(Path(directory).resolve())
    stamp = file_stamp(Path(directory) / INDEX_FILE)
    held = _INDEXED.get(key)
    if held is None or held[0] != stamp:
        cache = Path(directory) / SAMPLE_INDEX_FILE
        access = ShardRandomAccess(directory, record=_read_record(cache) if persist else None)
        if persist and not access.from_record:
            _write_record(cache, access.record())
        held = _INDEXED[key] = (stamp, access)
    return held[1]


def _read_record(path: Path) -> Optional[dict]:
    """A sample-index record, or None (absent, a link, too large, not JSON)."""
    import json

    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _SAMPLE_INDEX_MAX_BYTES:
            return None
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _write_record(path: Path, record: dict) -> None:
    """Keep the record (atomically; a read-only or full folder only costs the next process a scan)."""
    import json

    from actgen.shards.atomic import atomic_write_text

    try:
        atomic_write_text(path, json.dumps(record, separators=(",", ":")))
    except OSError as e:
        _logger.debug("sample index not kept at %s: %s", path, e)


class SyntheticImages(Dataset):
    """A fetched synthetic data set (``ShardRandomAccess``) with the training transform.

    With ``class_names`` (the run's), labels are mapped by class name: a received set may list
    the run's classes in another order, or only some of them (checked when it joined the pool).
    """

    def __init__(self, directory: str | Path, transform: Callable, class_names: Optional[Sequence[str]] = None):
        self.directory = str(directory)
        self.shards = shard_index(directory, persist=True)
        self.transform = transform
        names = list(class_names) if class_names is not None else self.shards.class_names
        missing = sorted(set(self.shards.class_names) - set(names))
        if missing:
            raise ValueError(f"{directory}: classes {missing} are not among the run's {names}")
        self.label_map = np.array([names.index(n) for n in self.shards.class_names], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.shards)

    def labels(self) -> np.ndarray:
        """Every sample's label in the run's class order."""
        return self.label_map[np.asarray(self.shards.labels(), dtype=np.int64)]

    def __getitem__(self, index: int):
        image, label = _load(self.shards.__getitem__, index)
        return self.transform(image), int(self.label_map[label])
