"""Write synthetic shard data sets: tar shards (atomic), then the index, timm ``_info.json`` and a
dataset card, last, so a reader never takes a half-written data set as whole."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from . import __version__
from ._schema import dumps, utc_now
from .atomic import atomic_write_text, fsync_dir, temp_sibling
from .card import dataset_card, shard_image_format
from .samples import IMAGE_FORMATS, SyntheticSample, encode_sample

_logger = logging.getLogger(__name__)

INDEX_FORMAT = "actgen.synthetic-shards"
INDEX_FORMAT_VERSION = 2
"""The newest version this code reads. Version 2: ``created.holds_copies`` is true, the set holds
real images copied through the builder's ``mode: copy`` (a control, not renders), and readers
from before it must not take it for a rendered set. Sets without copies are written as version 1."""
COPIES_KEY = "holds_copies"
INDEX_FILE = "index.json"
TIMM_INFO_FILE = "_info.json"
CARD_FILE = "README.md"
CONTACT_SHEET_FILE = "contact_sheet.png"      # actgen-build's grid of renders beside their guides
BANK_FILE = "memory_bank.safetensors"          # actgen-build's memory bank of the round
TIMM_SPLIT = "train"
# Fixed member mtime (2000-01-01 UTC) so that a shard's bytes depend only on its samples.
SHARD_MTIME = 946684800


@dataclass(frozen=True)
class ShardInfo:
    filename: str          # relative to the data-set directory, "<prefix>-%06d.tar"
    num_samples: int
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class DatasetIndex:
    class_names: list[str]
    image_size: tuple[int, int]        # (H, W) of stored images
    shards: list[ShardInfo]
    num_samples: int
    created: dict = field(default_factory=dict)   # tool_version, time, round, generator, config...
    name: str = "actgen-synthetic"
    format: str = INDEX_FORMAT
    format_version: int = 1


def index_version(created: dict) -> int:
    """The version an index is written at: 2 when its set holds copies of real images, else 1."""
    return 2 if created.get(COPIES_KEY) is True else 1


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_stamp(path: str | Path) -> tuple[int, int, int, int]:
    """``(size, mtime_ns, ctime_ns, inode)``: what tells, without reading it, that a file (or a
    folder's entry list) is the one seen before. ``ctime`` cannot be set back by a user, so a file
    rewritten with its old size and mtime restored still differs."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _check_filename(filename: str) -> None:
    if not filename.endswith(".tar") or "/" in filename or "\\" in filename or filename.startswith("."):
        raise ValueError(f"shard filename must be a plain '<name>.tar' inside the data-set directory, "
                         f"got {filename!r}")


class _ShardFile:
    """One shard being written: a hidden temporary tar that becomes ``filename`` on commit."""

    def __init__(self, directory: Path, filename: str, image_format: str):
        import webdataset as wds

        _check_filename(filename)
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {list(IMAGE_FORMATS)}, got {image_format!r}")
        self.path = directory / filename
        self.image_format = image_format
        self.keys: set[str] = set()
        self.image_size: tuple[int, int] | None = None
        self._tmp = temp_sibling(self.path, "partial")
        self._file = open(self._tmp, "wb")
        # encoder=False: members are already bytes (encode_sample); fixed owner, mode and mtime.
        self._tar = wds.TarWriter(self._file, encoder=False, user="actgen", group="actgen",
                                  mode=0o444, mtime=SHARD_MTIME)

    def add(self, sample: SyntheticSample) -> None:
        if sample.key in self.keys:
            raise ValueError(f"{self.path.name}: duplicate sample key {sample.key!r}")
        self._tar.write(encode_sample(sample, self.image_format))
        self.keys.add(sample.key)
        size = (sample.image.height, sample.image.width)
        if self.image_size is None:
            self.image_size = size
        elif size != self.image_size:
            raise ValueError(f"{self.path.name}: sample {sample.key!r} is {size[0]}x{size[1]} (HxW) but "
                             f"earlier samples are {self.image_size[0]}x{self.image_size[1]}")

    def commit(self) -> ShardInfo:
        if not self.keys:
            raise ValueError(f"{self.path.name}: a shard needs at least one sample")
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        info = ShardInfo(filename=self.path.name, num_samples=len(self.keys),
                         sha256=file_sha256(self._tmp), size_bytes=self._tmp.stat().st_size)
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)
        _logger.debug("wrote %s (%d samples)", self.path, info.num_samples)
        return info

    def abort(self) -> None:
        try:
            # Close the tar stream before its file, or its finaliser later writes to a closed file.
            self._tar.close()
        except (OSError, ValueError, tarfile.TarError):
            pass  # the half-written temporary file is deleted below anyway
        finally:
            self._file.close()
            self._tmp.unlink(missing_ok=True)


def write_shard(directory: str | Path, filename: str, samples: Iterable, image_format: str = "png") -> ShardInfo:
    """Write one tar shard atomically (temp name in the same directory, fsync, rename); fixed
    mtime so the bytes depend only on the samples. ``samples`` are SyntheticSample."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shard = _ShardFile(directory, filename, image_format)
    try:
        for sample in samples:
            shard.add(sample)
        return shard.commit()
    except BaseException:
        shard.abort()
        raise


def check_index(index: DatasetIndex, where: str) -> None:
    """Rules across fields of an index; FormatError naming ``where``."""
    from .errors import FormatError

    if not index.class_names or len(set(index.class_names)) != len(index.class_names):
        raise FormatError(where, f"field 'class_names' must be non-empty and unique, got {index.class_names}")
    if any(v <= 0 for v in index.image_size):
        raise FormatError(where, f"field 'image_size' must be positive (H, W), got {list(index.image_size)}")
    if not index.shards:
        raise FormatError(where, "field 'shards' is empty")
    seen = set()
    for i, shard in enumerate(index.shards):
        try:
            _check_filename(shard.filename)
        except ValueError as e:
            raise FormatError(where, f"field 'shards[{i}].filename': {e}") from None
        if shard.filename in seen:
            raise FormatError(where, f"field 'shards[{i}].filename' {shard.filename!r} is listed twice")
        seen.add(shard.filename)
        if shard.num_samples <= 0 or shard.size_bytes <= 0:
            raise FormatError(where, f"field 'shards[{i}]' must have num_samples and size_bytes > 0")
        if len(shard.sha256) != 64 or any(c not in "0123456789abcdef" for c in shard.sha256):
            raise FormatError(where, f"field 'shards[{i}].sha256' must be 64 lowercase hex digits")
    total = sum(s.num_samples for s in index.shards)
    if total != index.num_samples:
        raise FormatError(where, f"field 'num_samples' is {index.num_samples} but the shards hold {total}")


def timm_info(index: DatasetIndex) -> dict:
    """The ``_info.json`` that ``timm.data.readers.reader_wds`` reads (one split, "train")."""
    return {
        "name": index.name,
        "splits": {
            TIMM_SPLIT: {
                "name": TIMM_SPLIT,
                "num_samples": index.num_samples,
                "filenames": [s.filename for s in index.shards],
                "shard_lengths": [s.num_samples for s in index.shards],
            }
        },
    }


def write_index(directory: str | Path, index: DatasetIndex) -> None:
    """Write ``index.json``, timm's ``_info.json`` (split "train") and ``README.md`` (dataset card
    with YAML front matter), each atomically; ``index.json`` last."""
    directory = Path(directory)
    if index.format != INDEX_FORMAT:
        raise ValueError(f"write_index: format must be {INDEX_FORMAT!r}, got {index.format!r}")
    index = dataclasses.replace(index, format_version=index_version(index.created))
    check_index(index, str(directory / INDEX_FILE))
    atomic_write_text(directory / TIMM_INFO_FILE, json.dumps(timm_info(index), indent=2) + "\n")
    atomic_write_text(directory / CARD_FILE, dataset_card(index, shard_image_format(directory, index)))
    # index.json marks the data set finished, so it goes last.
    atomic_write_text(directory / INDEX_FILE, dumps(index))
    _logger.info("wrote index %s: %d samples in %d shards", directory / INDEX_FILE,
                 index.num_samples, len(index.shards))


def shard_sizes(total: int, num_shards: int) -> list[int]:
    """Samples per shard when ``total`` samples are dealt in order to ``num_shards`` shards."""
    base, extra = divmod(total, num_shards)
    return [base + (1 if i < extra else 0) for i in range(num_shards)]


class ShardSetWriter:
    """Sequential convenience writer: ``num_shards`` shards for a known total (at least as many
    as reader ranks x workers), samples dealt to shards in order.

    ``close()`` writes the index after checking that exactly ``total`` samples arrived; until
    then the directory has no ``index.json`` and readers refuse it. Use as a context manager to
    discard the shard in progress on an exception.
    """

    def __init__(self, directory: str | Path, class_names: list[str], total: int, num_shards: int,
                 prefix: str = "synth", image_format: str = "png", created: dict | None = None,
                 overwrite: bool = False):
        if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
            raise ValueError(f"ShardSetWriter: total must be a positive int, got {total!r}")
        if isinstance(num_shards, bool) or not isinstance(num_shards, int) or not 0 < num_shards <= total:
            raise ValueError(f"ShardSetWriter: num_shards must be in 1..total ({total}), got {num_shards!r}")
        if not class_names or len(set(class_names)) != len(class_names):
            raise ValueError(f"ShardSetWriter: class_names must be non-empty and unique, got {class_names}")
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"ShardSetWriter: image_format must be one of {list(IMAGE_FORMATS)}, got {image_format!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        index_path = self.directory / INDEX_FILE
        if index_path.exists():
            if not overwrite:
                raise FileExistsError(f"{index_path}: a finished data set is already here; pass "
                                      "overwrite=True or choose another directory")
            # Unfinish it first, so no reader pairs the old index with new shards.
            index_path.unlink()
            fsync_dir(self.directory)
        self.class_names = list(class_names)
        self.total = total
        self.prefix = prefix
        self.image_format = image_format
        self.created = {"tool_version": __version__,
                        "time": utc_now(),
                        **(created or {})}
        self._sizes = shard_sizes(total, num_shards)
        self._shards: list[ShardInfo] = []
        self._current: _ShardFile | None = None
        self._keys: set[str] = set()
        self._image_size: tuple[int, int] | None = None
        self._count = 0
        self._closed = False

    def __enter__(self) -> "ShardSetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self._closed:
                self.close()
        else:
            self.abort()

    def write(self, sample) -> None:
        """Add one SyntheticSample; ValueError on a repeated key, bad label or a different image size."""
        if self._closed:
            raise ValueError("ShardSetWriter: write() after close()")
        if self._count >= self.total:
            raise ValueError(f"ShardSetWriter: more than total={self.total} samples")
        if sample.key in self._keys:
            raise ValueError(f"ShardSetWriter: duplicate sample key {sample.key!r}")
        if not 0 <= sample.label < len(self.class_names):
            raise ValueError(f"ShardSetWriter: sample {sample.key!r} label {sample.label} outside "
                             f"0..{len(self.class_names) - 1}")
        name = sample.provenance.get("class_name")
        if name != self.class_names[sample.label]:
            raise ValueError(f"ShardSetWriter: sample {sample.key!r} provenance class_name {name!r} is not "
                             f"{self.class_names[sample.label]!r} (label {sample.label})")
        size = (sample.image.height, sample.image.width)
        if self._image_size is not None and size != self._image_size:
            raise ValueError(f"ShardSetWriter: sample {sample.key!r} is {size} (HxW), earlier samples "
                             f"are {self._image_size}")
        if self._current is None:
            filename = shard_name(self.prefix, len(self._shards))
            self._current = _ShardFile(self.directory, filename, self.image_format)
        self._current.add(sample)
        self._image_size = size
        self._keys.add(sample.key)
        self._count += 1
        if len(self._current.keys) == self._sizes[len(self._shards)]:
            self._shards.append(self._current.commit())
            self._current = None

    def abort(self) -> None:
        """Discard the shard in progress; finished shards stay but no index is written."""
        if self._current is not None:
            self._current.abort()
            self._current = None
        self._closed = True

    def close(self) -> DatasetIndex:
        """Write index, ``_info.json`` and card; ValueError unless exactly ``total`` samples came."""
        if self._closed:
            raise ValueError("ShardSetWriter: close() called twice or after abort()")
        if self._count != self.total:
            self.abort()
            raise ValueError(f"ShardSetWriter: got {self._count} samples, expected total={self.total}; "
                             f"no index written in {self.directory}")
        index = DatasetIndex(class_names=self.class_names, image_size=self._image_size,
                             shards=list(self._shards), num_samples=self.total, created=self.created)
        write_index(self.directory, index)
        self._closed = True
        return index

