"""Read synthetic shard data sets from a local directory, a brace pattern or an http(s) URL."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from ._schema import check_format, from_jsonable, is_int, load_json
from .atomic import atomic_directory
from .errors import FormatError, writing
from .samples import (IMAGE_FORMATS, SAMPLE_MEMBERS, SyntheticSample, check_key, decode_image, decode_label,
                      decode_provenance, decode_sample, is_extra_member, sample_members)
from .transfer import (_CHUNK, INDEX_MAX_BYTES, SHARD_MAX_BYTES, UNREADABLE_SCHEME, _is_pattern, _Sink,
                       deadline_after, is_url, join_location, read_location, remote_get)
from .writer import INDEX_FILE, INDEX_FORMAT, INDEX_FORMAT_VERSION, DatasetIndex, check_index, file_sha256, write_index

_logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Index


def parse_index(data: bytes, where: str) -> DatasetIndex:
    """Validate the bytes of an ``index.json``."""
    obj = load_json(data, where)
    check_format(where, obj, INDEX_FORMAT, INDEX_FORMAT_VERSION)
    index = from_jsonable(DatasetIndex, obj, where)
    check_index(index, where)
    return index


def read_index(location: str | Path, timeout_s: Optional[float] = None):
    """``DatasetIndex`` from ``<location>/index.json`` (local or http(s)); FormatError if absent
    or malformed. This is how a trainer tells a finished data set from one still being built.

    Args:
        location: data-set directory or URL.
        timeout_s: wall-clock budget for an http(s) read (None: the per-file limits only).

    Raises:
        FormatError: absent (HTTP 404 included), malformed, or over INDEX_MAX_BYTES.
        ConnectionError, TimeoutError: the server cannot be reached, or stalls (http only).
    """
    where = join_location(location, INDEX_FILE)
    too_large = f"larger than {INDEX_MAX_BYTES} bytes"
    try:
        data = read_location(where, INDEX_MAX_BYTES, timeout_s, too_large=too_large)
    except FormatError as e:
        if e.problem.startswith((too_large, UNREADABLE_SCHEME)):
            raise
        raise FormatError(where, f"{e.problem}: no finished data set here (index.json is written last)") from None
    return parse_index(data, where)


def shard_urls(location: str | Path) -> list[str]:
    """Shard URLs of a data set directory/URL (from its index) or of a brace pattern."""
    import braceexpand

    location = str(location)
    if _is_pattern(location):
        return list(braceexpand.braceexpand(location))
    return [join_location(location, s.filename) for s in read_index(location).shards]


# --------------------------------------------------------------------------------------------
# Streaming


def _decode_members(members: dict) -> SyntheticSample:
    return decode_sample(members, where=str(members.get("__url__", "")))


def iter_samples(location: str | Path, handler: Callable[[Exception], bool] | None = None) -> Iterator:
    """Stream SyntheticSample objects with WebDataset (local paths, brace patterns, http URLs).

    A data-set directory/URL must have its ``index.json``; a brace pattern is read as is.

    Args:
        location: data-set directory or URL, or a brace pattern of shards.
        handler: WebDataset exception handler; the default re-raises (e.g. ``FormatError`` on a bad
            sample). Pass ``webdataset.warn_and_continue`` to skip bad samples and shards.

    A shard URL that cannot be fetched raises ``OSError`` (curl's exit status) or
    ``tarfile.ReadError`` (empty stream), whichever comes first; both carry the URL.
    """
    import webdataset as wds

    handler = handler or wds.reraise_exception
    urls = shard_urls(location)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.tarfile_to_samples(handler=handler),
        wds.map(_decode_members, handler=handler),
    )
    return iter(pipeline)


# --------------------------------------------------------------------------------------------
# Tar layout


def scan_tar(fileobj, where: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Samples of one tar in order: ``[(key, {ext: (data offset, size)})]``.

    Members that are not ours (see :func:`~actgen.shards.samples.is_extra_member`) are listed
    too, so that callers can report them; nothing here reads any member's bytes.

    FormatError on a truncated or unreadable tar, a member outside the flat ``<key>.<ext>`` layout,
    or a key that appears twice.
    """
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                name = member.name
                key, _, ext = name.partition(".")
                if "/" in name or not key or not (ext.lower() in SAMPLE_MEMBERS or is_extra_member(ext)):
                    raise FormatError(where, f"member {name[:200]!r} is not '<key>.<ext>' with ext one of "
                                             f"{sorted(SAMPLE_MEMBERS)} or another plain extension "
                                             "(keys contain no '.' or '/')")
                ext = ext.lower() if ext.lower() in SAMPLE_MEMBERS else ext
                if not samples or samples[-1][0] != key:
                    if key in seen:
                        raise FormatError(where, f"duplicate key {key!r} (its members are not contiguous "
                                                 "or it appears twice)")
                    seen.add(key)
                    samples.append((key, {}))
                members = samples[-1][1]
                if ext in members:
                    raise FormatError(where, f"sample {key!r}: member '{ext}' appears twice")
                members[ext] = (member.offset_data, member.size)
    except tarfile.TarError as e:
        raise FormatError(where, f"truncated or corrupt tar ({e})") from None
    return samples


def read_member(f, span: tuple[int, int]) -> bytes:
    offset, size = span
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise EOFError(f"short read at offset {offset}")
    return data


# --------------------------------------------------------------------------------------------
# Fetch


def _link_verified(source: Path, destination: Path, sha256: str, size_bytes: int) -> bool:
    """A hard link at ``destination`` to the regular file ``source`` on the same file system,
    kept only when its size and sha256 are the index's: no second copy of a data set a run takes
    from its own round folders (writers replace files by rename, so a linked file never changes
    under the run). False (nothing left) where a link cannot be made or does not verify; the
    caller then copies, which reports the mismatch."""
    import os
    import stat as stat_module

    try:
        info = os.lstat(source)
        if not stat_module.S_ISREG(info.st_mode) or info.st_size != size_bytes or \
                info.st_dev != os.stat(destination.parent).st_dev:
            return False
        os.link(source, destination, follow_symlinks=False)
    except OSError:
        return False
    try:
        if file_sha256(destination) == sha256 and destination.stat().st_size == size_bytes:
            return True
    except OSError:
        pass
    destination.unlink(missing_ok=True)
    return False


def copy_verified(source: str, destination: str | Path, sha256: str, size_bytes: int,
                  deadline: float = math.inf) -> None:
    """Copy or download ``source`` to ``destination``; FormatError if size or sha256 differ.

    Reading stops one byte past ``size_bytes``. Downloads run under ``deadline`` (a
    ``time.monotonic()`` value, see :func:`deadline_after`) and the per-file HTTP limits. On any
    failure ``destination`` is removed.

    Raises:
        FormatError: other size or sha256, HTTP errors.
        ConnectionError, TimeoutError: the server cannot be reached or is too slow (http only).
    """
    destination = Path(destination)
    too_large = f"size is over {size_bytes} bytes, index says {size_bytes}"
    if not is_url(source) and _link_verified(Path(source), destination, sha256, size_bytes):
        return
    try:
        with writing(destination), open(destination, "wb") as dst:  # a full disk names the file
            if is_url(source):
                sink = remote_get(source, dst, deadline, size_bytes, too_large)
            else:
                sink = _Sink(dst)
                try:
                    src = open(source, "rb")
                except FileNotFoundError:
                    raise FormatError(source, "file not found") from None
                with src:
                    while sink.size <= size_bytes:
                        chunk = src.read(min(_CHUNK, size_bytes + 1 - sink.size))
                        if not chunk:
                            break
                        sink.write(chunk)
                if sink.size > size_bytes:
                    raise FormatError(source, f"{too_large} (stopped reading at byte {sink.size})")
        if sink.size != size_bytes:
            raise FormatError(source, f"size is {sink.size} bytes, index says {size_bytes}")
        if sink.sha256.hexdigest() != sha256:
            raise FormatError(source, f"sha256 is {sink.sha256.hexdigest()}, index says {sha256}")
    except BaseException:
        destination.unlink(missing_ok=True)
        raise


def fetch(location: str | Path, destination: str | Path, timeout_s: Optional[float] = None):
    """Copy (or download) a finished data set into ``destination`` (atomic: temp dir + rename),
    verifying every shard's size and sha256 against the index. Returns the DatasetIndex.

    A ``destination`` that already holds the same index is left as it is. ``timeout_s`` is the
    wall-clock budget of the whole fetch over http(s) (None: the per-file limits only); on any
    failure nothing is left behind.
    """
    deadline = deadline_after(timeout_s)
    index = read_index(location, timeout_s=None if timeout_s is None else deadline - time.monotonic())
    destination = Path(destination)
    if (destination / INDEX_FILE).is_file():
        try:
            if read_index(destination) == index:
                _logger.info("fetch: %s already holds %s", destination, location)
                return index
        except FormatError:
            pass  # a different or damaged copy: replaced below
    with atomic_directory(destination) as tmp:
        for shard in index.shards:
            copy_verified(join_location(location, shard.filename), tmp / shard.filename,
                          shard.sha256, shard.size_bytes, deadline)
        write_index(tmp, index)
    _logger.info("fetched %s -> %s (%d shards)", location, destination, len(index.shards))
    return index


@contextlib.contextmanager
def local_file(location: str, max_bytes: int = SHARD_MAX_BYTES, deadline: float = math.inf,
               too_large: str = "") -> Iterator[str]:
    """A local path for ``location``: itself, or a temporary download of a URL (removed after).

    A download stops one byte past ``max_bytes`` (FormatError, message ``too_large``) and runs
    under ``deadline`` (``time.monotonic()``) and the per-file HTTP limits.
    """
    if not is_url(location):
        if not os.path.isfile(location):
            raise FormatError(location, "file not found")
        yield location
        return
    with tempfile.NamedTemporaryFile(suffix=".tar") as tmp:
        remote_get(location, tmp, deadline, max_bytes, too_large or f"larger than {max_bytes} bytes")
        tmp.flush()
        yield tmp.name


# --------------------------------------------------------------------------------------------
# Random access


SAMPLE_INDEX_FORMAT = "actgen.sample-index"


def _is_span(span, size: int) -> bool:
    """``[offset, length]`` inside a file of ``size`` bytes."""
    return (isinstance(span, list) and len(span) == 2 and all(is_int(v) and v >= 0 for v in span)
            and span[0] + span[1] <= size)


class ShardRandomAccess:
    """Map-style random access over the local tar shards of a data set (offset index built once;
    each read opens the file, so it is safe in DataLoader worker processes).

    ``len(x)``, ``x[i] -> (PIL RGB image, label)``, ``x.key(i)``, ``x.class_names``.
    """

    def __init__(self, directory: str | Path, record: Optional[dict] = None):
        """``record``: an earlier :meth:`record` of this data set; used instead of scanning the
        shards when it describes the files as they are now (every stamp equal) and every entry
        checks out, else ignored (:attr:`from_record` says which)."""
        if is_url(directory):
            raise ValueError(f"ShardRandomAccess needs a local directory, got {directory}; fetch() it first")
        self.directory = Path(directory)
        self.index = read_index(self.directory)
        self.class_names = list(self.index.class_names)
        self._paths = [str(self.directory / s.filename) for s in self.index.shards]
        # One entry per sample: (shard number, key, image ext, image span, json span).
        self._entries: list[tuple[int, str, str, tuple[int, int], tuple[int, int]]] = []
        self._labels: list[int] = []
        self.from_record = record is not None and self._load_record(record)
        if not self.from_record:
            self._scan()

    def _stamps(self) -> dict[str, list[int]]:
        from .writer import file_stamp

        return {name: list(file_stamp(self.directory / name))
                for name in [INDEX_FILE, *(s.filename for s in self.index.shards)]}

    def record(self) -> dict:
        """What a later process needs to skip the scan (:class:`ShardRandomAccess` ``record=``):
        each sample's shard, key, image member, spans and label, under the stamps (size, mtime,
        ctime, inode) of the index and the shards they were read from."""
        return {"format": SAMPLE_INDEX_FORMAT, "format_version": 1, "stamps": self._stamps(),
                "entries": [[n, key, ext, list(span), list(json_span), label]
                            for (n, key, ext, span, json_span), label in zip(self._entries, self._labels)]}

    def _load_record(self, record: dict) -> bool:
        """Take the entries of ``record`` if it is well formed and still true of the files."""
        try:
            if (not isinstance(record, dict) or record.get("format") != SAMPLE_INDEX_FORMAT
                    or record.get("format_version") != 1 or record.get("stamps") != self._stamps()):
                return False
            rows = record.get("entries")
            if not isinstance(rows, list) or len(rows) != sum(s.num_samples for s in self.index.shards):
                return False
            counts = [0] * len(self.index.shards)
            sizes = [s.size_bytes for s in self.index.shards]
            entries, labels = [], []
            for row in rows:
                n, key, ext, span, json_span, label = row
                if not (is_int(n) and 0 <= n < len(sizes) and check_key(key) is None and ext in IMAGE_FORMATS
                        and _is_span(span, sizes[n]) and _is_span(json_span, sizes[n])
                        and is_int(label) and 0 <= label < len(self.class_names)):
                    return False
                counts[n] += 1
                entries.append((n, key, ext, (span[0], span[1]), (json_span[0], json_span[1])))
                labels.append(label)
            if counts != [s.num_samples for s in self.index.shards]:
                return False
        except (TypeError, ValueError, OSError):
            return False
        self._entries, self._labels = entries, labels
        return True

    def _scan(self) -> None:
        for number, (path, shard) in enumerate(zip(self._paths, self.index.shards)):
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                raise FormatError(path, "shard listed in index.json is missing") from None
            with f:
                samples = scan_tar(f, path)
                if len(samples) != shard.num_samples:
                    raise FormatError(path, f"holds {len(samples)} samples, index.json says {shard.num_samples}")
                for key, members in samples:
                    _, ext = sample_members({"__key__": key, **members}, path)
                    label = decode_label(read_member(f, members["cls"]), path, key)
                    if label >= len(self.class_names):
                        raise FormatError(path, f"sample {key!r}: label {label} outside 0..{len(self.class_names) - 1}")
                    self._entries.append((number, key, ext, members[ext], members["json"]))
                    self._labels.append(label)

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        return self._entries[index]

    def __getitem__(self, index: int):
        number, key, ext, span, _ = self._entry(index)
        path = self._paths[number]
        with open(path, "rb") as f:
            data = read_member(f, span)
        return decode_image(data, path, key, ext), self._labels[index]

    def key(self, index: int) -> str:
        return self._entry(index)[1]

    def label(self, index: int) -> int:
        self._entry(index)
        return self._labels[index]

    def labels(self) -> list[int]:
        """All labels in sample order (read once at construction)."""
        return list(self._labels)

    def image_extension(self, index: int) -> str:
        """The sample's image member: ``png``, ``jpg`` or ``webp``."""
        return self._entry(index)[2]

    def provenance(self, index: int) -> dict:
        """The sample's provenance alone (its image is not read)."""
        number, key, _, _, json_span = self._entry(index)
        path = self._paths[number]
        with open(path, "rb") as f:
            return decode_provenance(read_member(f, json_span), path, key)

    def sample(self, index: int) -> SyntheticSample:
        """The full sample, provenance included."""
        number, key, ext, span, json_span = self._entry(index)
        path = self._paths[number]
        with open(path, "rb") as f:
            image, provenance = read_member(f, span), read_member(f, json_span)
        return SyntheticSample(key=key, image=decode_image(image, path, key, ext), label=self._labels[index],
                               provenance=decode_provenance(provenance, path, key), encoded=(ext, image))
