"""Read synthetic shard data sets from a local directory, a brace pattern or an http(s) URL."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import logging
import math
import os
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional

from ._schema import check_format, from_jsonable, load_json
from .atomic import atomic_directory
from .errors import FormatError, writing
from .samples import (SAMPLE_MEMBERS, SyntheticSample, decode_image, decode_label, decode_provenance,
                      decode_sample, sample_members)
from .writer import INDEX_FILE, INDEX_FORMAT, INDEX_FORMAT_VERSION, DatasetIndex, check_index, write_index

_logger = logging.getLogger(__name__)

# HTTP limits. Every download has a deadline: the caller's (``timeout_s``: a round's wall-clock
# budget) or its own, whichever is earlier. Its own is HTTP_TIMEOUT_S plus the time the file takes
# at HTTP_MIN_BYTES_PER_S, so a server that trickles cannot hold a reader forever.
HTTP_TIMEOUT_S = 60.0                 # the longest wait for a connection or for the next bytes
HTTP_MIN_BYTES_PER_S = 256 * 1024     # slower than this on average, a download has failed
HTTP_RETRY_FIRST_S = 0.25             # first pause after a refused or reset connection, doubled each time
HTTP_RETRY_MAX_S = 10.0
INDEX_MAX_BYTES = 64 << 20            # an index.json larger than this is not read
SHARD_MAX_BYTES = 64 << 30            # a download whose size no index gives stops here
_RETRY_HTTP_STATUS = (502, 503, 504)  # a proxy or a busy server: retried like a refused connection
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Locations


def is_url(location: str | Path) -> bool:
    return str(location).startswith(("http://", "https://"))


def _is_pattern(location: str) -> bool:
    """A brace pattern or a single shard rather than a data-set directory."""
    return "{" in location or location.endswith(".tar")


def join_location(location: str | Path, filename: str) -> str:
    """``<location>/<filename>`` for a directory or a URL."""
    if is_url(location):
        return str(location).rstrip("/") + "/" + filename
    return str(Path(location) / filename)


# --------------------------------------------------------------------------------------------
# Bounded HTTP reads


def deadline_after(timeout_s: Optional[float]) -> float:
    """``time.monotonic()`` deadline ``timeout_s`` from now (``inf`` for None)."""
    return math.inf if timeout_s is None else time.monotonic() + max(float(timeout_s), 0.0)


class _Retry(Exception):
    """A connection-level failure worth another try (refused, reset, cut short, 502/503/504)."""


class _Sink:
    """Where a download goes: a file object, with the sha256 and size of what was written."""

    def __init__(self, out: BinaryIO):
        self.out, self.sha256, self.size = out, hashlib.sha256(), 0

    def write(self, chunk: bytes) -> None:
        self.out.write(chunk)
        self.sha256.update(chunk)
        self.size += len(chunk)

    def reset(self) -> None:
        self.out.seek(0)
        self.out.truncate()
        self.sha256, self.size = hashlib.sha256(), 0


def _set_read_timeout(response, seconds: float) -> None:
    # The socket under http.client's buffered reader: its timeout bounds each recv, so that a
    # read never blocks past the download's deadline.
    sock = getattr(getattr(response.fp, "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _timed_out(url: str, waited: float, sink: _Sink, started: bool) -> TimeoutError:
    """The TimeoutError of a read that waited ``waited`` s: a stall, or the deadline."""
    if waited < HTTP_TIMEOUT_S:
        return TimeoutError(f"{url}: download not finished in time ({sink.size} bytes read)")
    what = "stalled, no data" if started else "no response"
    return TimeoutError(f"{url}: {what} for {waited:.1f} s ({sink.size} bytes read)")


def _http_get_once(url: str, sink: _Sink, deadline: float, max_bytes: int, too_large: str) -> None:
    wait = min(deadline - time.monotonic(), HTTP_TIMEOUT_S)
    if wait <= 0:
        raise _timed_out(url, 0.0, sink, False)
    try:
        response = urllib.request.urlopen(url, timeout=wait)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code in _RETRY_HTTP_STATUS:
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise FormatError(url, f"cannot fetch (HTTP {e.code} {e.reason})") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise _timed_out(url, wait, sink, False) from None
        if isinstance(e.reason, ConnectionError):
            raise _Retry(str(e.reason)) from None
        raise ConnectionError(f"{url}: cannot connect ({e.reason})") from None
    except TimeoutError:
        raise _timed_out(url, wait, sink, False) from None
    except (ConnectionError, http.client.HTTPException) as e:
        raise _Retry(f"{type(e).__name__}: {e}") from None
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if length is not None and length > max_bytes:
            raise FormatError(url, f"{too_large} (the server announces {length} bytes; nothing read)")
        # The file's own deadline: a stall limit plus its size at the minimum rate.
        size = length if length is not None else max_bytes
        deadline = min(deadline, time.monotonic() + HTTP_TIMEOUT_S + size / HTTP_MIN_BYTES_PER_S)
        while True:
            wait = min(deadline - time.monotonic(), HTTP_TIMEOUT_S)
            if wait <= 0:
                raise _timed_out(url, 0.0, sink, True)
            _set_read_timeout(response, wait)
            try:
                # read1: whatever one recv returns, so the deadline is checked between chunks even
                # when a server trickles; never more than one byte past max_bytes.
                chunk = response.read1(min(_CHUNK, max_bytes + 1 - sink.size))
            except TimeoutError:
                raise _timed_out(url, wait, sink, True) from None
            except (ConnectionError, http.client.HTTPException) as e:
                raise _Retry(f"{type(e).__name__}: {e}") from None
            if not chunk:
                break
            sink.write(chunk)
            if sink.size > max_bytes:
                raise FormatError(url, f"{too_large} (stopped reading at byte {sink.size})")
        if response.length:  # the connection closed before the announced Content-Length
            raise _Retry(f"connection closed after {sink.size} of {sink.size + response.length} bytes")


def _http_get(url: str, out: BinaryIO, deadline: float, max_bytes: int, too_large: str) -> _Sink:
    """Download ``url`` into ``out`` (rewound between tries) under ``deadline`` and ``max_bytes``.

    Limits: the caller's ``deadline``; per try, HTTP_TIMEOUT_S for a connection and for each
    wait for data, and HTTP_TIMEOUT_S plus the file's size (Content-Length, else ``max_bytes``) at
    HTTP_MIN_BYTES_PER_S for the whole body. Refused, reset or cut-short connections and HTTP
    502/503/504 are retried with exponential backoff for up to HTTP_TIMEOUT_S (and the deadline).

    Raises:
        FormatError: HTTP 4xx/5xx, or more than ``max_bytes`` (message ``too_large``).
        ConnectionError: "cannot connect", with the last failure, once no try is left.
        TimeoutError: the server stalled, or the download did not finish in time.
    """
    sink, tries, pause, started = _Sink(out), 0, HTTP_RETRY_FIRST_S, time.monotonic()
    retry_until = min(deadline, started + HTTP_TIMEOUT_S)
    while True:
        tries += 1
        try:
            _http_get_once(url, sink, deadline, max_bytes, too_large)
            return sink
        except _Retry as e:
            if time.monotonic() + pause >= retry_until:
                raise ConnectionError(f"{url}: cannot connect ({e}; {tries} tries in "
                                      f"{time.monotonic() - started:.1f} s)") from None
            _logger.debug("%s: %s; trying again in %.2f s", url, e, pause)
            time.sleep(pause)
            pause = min(2 * pause, HTTP_RETRY_MAX_S)
            sink.reset()


def read_location(location: str, max_bytes: int, timeout_s: Optional[float] = None,
                  too_large: str = "") -> bytes:
    """The bytes of a local file or an http(s) URL, at most ``max_bytes`` (FormatError beyond).

    URLs are read under the limits of :func:`_http_get`; ``timeout_s`` is the caller's
    wall-clock budget.
    """
    too_large = too_large or f"larger than {max_bytes} bytes"
    if is_url(location):
        buffer = io.BytesIO()
        _http_get(location, buffer, deadline_after(timeout_s), max_bytes, too_large)
        return buffer.getvalue()
    try:
        with open(location, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise FormatError(location, "file not found") from None
    if len(data) > max_bytes:
        raise FormatError(location, too_large)
    return data


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
        if e.problem.startswith(too_large):
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

    FormatError on a truncated or unreadable tar, a member outside the flat ``<key>.<ext>`` layout
    (a key with a dot shows up as an unknown extension), or a key that appears twice.
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
                if "/" in name or not key or ext.lower() not in SAMPLE_MEMBERS:
                    raise FormatError(where, f"member {name!r} is not '<key>.<ext>' with ext one of "
                                             f"{sorted(SAMPLE_MEMBERS)} (keys contain no '.' or '/')")
                ext = ext.lower()
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
    try:
        with writing(destination), open(destination, "wb") as dst:  # a full disk names the file
            if is_url(source):
                sink = _http_get(source, dst, deadline, size_bytes, too_large)
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
        _http_get(location, tmp, deadline, max_bytes, too_large or f"larger than {max_bytes} bytes")
        tmp.flush()
        yield tmp.name


# --------------------------------------------------------------------------------------------
# Random access


class ShardRandomAccess:
    """Map-style random access over the local tar shards of a data set (offset index built once;
    each read opens the file, so it is safe in DataLoader worker processes).

    ``len(x)``, ``x[i] -> (PIL RGB image, label)``, ``x.key(i)``, ``x.class_names``.
    """

    def __init__(self, directory: str | Path):
        if is_url(directory):
            raise ValueError(f"ShardRandomAccess needs a local directory, got {directory}; fetch() it first")
        self.directory = Path(directory)
        self.index = read_index(self.directory)
        self.class_names = list(self.index.class_names)
        self._paths = [str(self.directory / s.filename) for s in self.index.shards]
        # One entry per sample: (shard number, key, image ext, image span, json span).
        self._entries: list[tuple[int, str, str, tuple[int, int], tuple[int, int]]] = []
        self._labels: list[int] = []
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

    def sample(self, index: int) -> SyntheticSample:
        """The full sample, provenance included."""
        number, key, ext, span, json_span = self._entry(index)
        path = self._paths[number]
        with open(path, "rb") as f:
            image, provenance = read_member(f, span), read_member(f, json_span)
        return SyntheticSample(key=key, image=decode_image(image, path, key, ext), label=self._labels[index],
                               provenance=decode_provenance(provenance, path, key))
