"""Bounded reads of local files, http(s) URLs and object stores: every download has a deadline
and a size cap.

Used by :mod:`.reader` (indexes, shards, fetch) and by the trainer through it. http(s) goes
through plain ``urllib``: each wait on the socket is bounded, the whole transfer has a deadline,
reading stops one byte past the expected size, refused or reset connections are retried with
backoff. Every other ``scheme://`` location (``s3://``, ``gs://``, ``hf://``, ...) goes through
fsspec (one code path; the scheme's package, e.g. ``s3fs``, must be installed): the store's size
is checked before any byte is read, reads go in ``_CHUNK`` blocks with the deadline checked
between them, and each request is bounded by the store's own connect and read timeouts
(``FS_OPTIONS``; botocore retries refused connections).
"""
from __future__ import annotations

import hashlib
import http.client
import io
import logging
import math
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Optional

from .errors import FormatError, Unreachable

_logger = logging.getLogger(__name__)

# HTTP limits. Every download has a deadline: the caller's (``timeout_s``: a round's wall-clock
# budget) or its own, whichever is earlier. Its own is HTTP_TIMEOUT_S plus the time the file takes
# at HTTP_MIN_BYTES_PER_S, so a server that trickles cannot hold a reader forever.
HTTP_TIMEOUT_S = 60.0                 # the longest wait for a connection or for the next bytes
HTTP_MIN_BYTES_PER_S = 256 * 1024     # slower than this on average, a download has failed
HTTP_RETRY_FIRST_S = 0.25             # first pause after a refused or reset connection, doubled each time
HTTP_RETRY_MAX_S = 10.0
HTTP_REFUSED_RETRY_S = 5.0            # a refused connection is retried this long (a server restarting), no more
INDEX_MAX_BYTES = 64 << 20            # an index.json larger than this is not read
SHARD_MAX_BYTES = 64 << 30            # a download whose size no index gives stops here
_RETRY_HTTP_STATUS = (502, 503, 504)  # a proxy or a busy server: retried like a refused connection
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Locations


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# Per-protocol fsspec options: each request to the store waits at most HTTP_TIMEOUT_S for a
# connection and for data (s3fs passes ``config_kwargs`` to botocore's Config).
FS_OPTIONS: dict[str, dict] = {
    "s3": {"config_kwargs": {"connect_timeout": HTTP_TIMEOUT_S, "read_timeout": HTTP_TIMEOUT_S,
                             "retries": {"max_attempts": 3, "mode": "standard"}}},
}
# s3fs retries a failed request itself (its ``retries`` attribute, 5 by default) on top of
# botocore's attempts, so a store that stalls holds a read for about timeout x attempts x retries.
FS_RETRIES: dict[str, int] = {"s3": 2}


def is_url(location: str | Path) -> bool:
    """A remote location: http(s), or any other ``scheme://`` fsspec reads (not ``file://``)."""
    text = str(location)
    return _SCHEME.match(text) is not None and not text.startswith("file://")


def is_http(location: str | Path) -> bool:
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
    """A connection-level failure worth another try (refused, reset, cut short, 502/503/504).
    ``refused``: the server refused the connection, retried for HTTP_REFUSED_RETRY_S only."""

    def __init__(self, cause: str, refused: bool = False):
        super().__init__(cause)
        self.refused = refused


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
        if isinstance(e.reason, ConnectionRefusedError):
            raise _Retry("connection refused", refused=True) from None
        if isinstance(e.reason, ConnectionError):
            raise _Retry(str(e.reason)) from None
        if isinstance(e.reason, socket.gaierror):
            raise Unreachable(f"{url}: unknown host ({e.reason.strerror or e.reason})") from None
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
    last: Optional[_Retry] = None
    while True:
        tries += 1
        try:
            _http_get_once(url, sink, deadline, max_bytes, too_large)
            return sink
        except TimeoutError:
            if last is not None and sink.size == 0:   # the deadline came while retrying: say why
                raise ConnectionError(f"{url}: cannot connect ({last}; {tries - 1} tries in "
                                      f"{time.monotonic() - started:.1f} s)") from None
            raise
        except _Retry as e:
            last = e
            until = min(retry_until, started + HTTP_REFUSED_RETRY_S) if e.refused else retry_until
            if time.monotonic() + pause >= until:
                raise ConnectionError(f"{url}: cannot connect ({e}; {tries} tries in "
                                      f"{time.monotonic() - started:.1f} s)") from None
            _logger.info("%s: %s; trying again in %.2f s (try %d)", url, e, pause, tries + 1)
            time.sleep(pause)
            pause = min(2 * pause, HTTP_RETRY_MAX_S)
            sink.reset()


UNREADABLE_SCHEME = "no installed package reads"   # how a FormatError for such a scheme starts


def filesystem(url: str):
    """``(fsspec file system, path)`` for a non-http URL, with :data:`FS_OPTIONS` for its protocol.

    Raises:
        FormatError: a scheme that no installed fsspec implementation reads (naming the package
            to install where fsspec knows it).
    """
    import fsspec

    protocol = url.split("://", 1)[0]
    try:
        fs, path = fsspec.core.url_to_fs(url, **FS_OPTIONS.get(protocol, {}))
        if protocol in FS_RETRIES and hasattr(fs, "retries"):
            fs.retries = FS_RETRIES[protocol]
        return fs, path
    except (ImportError, ValueError) as e:
        raise FormatError(url, f"{UNREADABLE_SCHEME} {protocol}:// locations ({' '.join(str(e).split())})") from None


def _fs_get(url: str, out: BinaryIO, deadline: float, max_bytes: int, too_large: str) -> _Sink:
    """Download a non-http URL through fsspec into ``out`` (see the module docstring)."""
    sink = _Sink(out)
    fs, path = filesystem(url)
    try:
        size = fs.size(path)
        if size is not None and size > max_bytes:
            raise FormatError(url, f"{too_large} (the store says {size} bytes; nothing read)")
        with fs.open(path, "rb", block_size=_CHUNK) as f:
            while True:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{url}: download not finished in time ({sink.size} bytes read)")
                chunk = f.read(min(_CHUNK, max_bytes + 1 - sink.size))
                if not chunk:
                    break
                sink.write(chunk)
                if sink.size > max_bytes:
                    raise FormatError(url, f"{too_large} (stopped reading at byte {sink.size})")
    except (FormatError, TimeoutError):
        raise
    except FileNotFoundError as e:
        if _no_such_bucket(e):
            raise Unreachable(f"{url}: no such bucket ({' '.join(str(e).split())})") from None
        raise FormatError(url, "file not found") from None     # may still appear: a reader can wait
    except PermissionError as e:
        raise Unreachable(f"{url}: access denied ({' '.join(str(e).split())})") from None
    except Exception as e:   # the stores' clients raise their own types for network failures
        if "timeout" in type(e).__name__.lower() or "timed out" in str(e).lower():
            raise TimeoutError(f"{url}: the store did not answer in time ({type(e).__name__}: {e})") from None
        raise ConnectionError(f"{url}: cannot read ({type(e).__name__}: {' '.join(str(e).split())})") from None
    return sink


def _no_such_bucket(e: FileNotFoundError) -> bool:
    """A store's "bucket does not exist" (s3fs, gcsfs), told apart from a missing object in it."""
    text = str(e).lower()
    return "nosuchbucket" in text or ("bucket" in text and ("not exist" in text or "not found" in text))


def remote_get(url: str, out: BinaryIO, deadline: float, max_bytes: int, too_large: str) -> _Sink:
    """Download ``url`` (http(s): :func:`_http_get`; other schemes: fsspec) into ``out``."""
    if is_http(url):
        return _http_get(url, out, deadline, max_bytes, too_large)
    return _fs_get(url, out, deadline, max_bytes, too_large)


def read_location(location: str, max_bytes: int, timeout_s: Optional[float] = None,
                  too_large: str = "") -> bytes:
    """The bytes of a local file or an http(s) URL, at most ``max_bytes`` (FormatError beyond).

    URLs are read under the limits of :func:`_http_get`; ``timeout_s`` is the caller's
    wall-clock budget.
    """
    too_large = too_large or f"larger than {max_bytes} bytes"
    if is_url(location):
        buffer = io.BytesIO()
        remote_get(location, buffer, deadline_after(timeout_s), max_bytes, too_large)
        return buffer.getvalue()
    try:
        with open(location, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise FormatError(location, "file not found") from None
    if len(data) > max_bytes:
        raise FormatError(location, too_large)
    return data
