"""HTTP reads are bounded: servers that stall, trickle, flood, reset or refuse (loopback only).

Each test runs in a few seconds: the limits are shrunk through ``timeout_s``, ``synthetic.timeout_s``
or ``actgen.shards.transfer.HTTP_TIMEOUT_S``, and every server thread stops at the end of its test.
"""
from __future__ import annotations

import functools
import http.server
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from actgen.shards import transfer
from actgen.shards.errors import FormatError
from actgen.shards.reader import fetch, read_index
from actgen.trainer.config import SyntheticConfig
from actgen.trainer.synthetic import wait_until_finished

pytestmark = pytest.mark.timeout(30)  # the bug these guard against is a read that never ends


# ------------------------------------------------------------------------------------- servers
class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; a path listed in ``server.behaviours`` gets that behaviour instead."""

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        behaviour = self.server.behaviours.get(self.path.split("/")[-1])
        if behaviour is None:
            return super().do_GET()
        try:
            behaviour(self)
        except OSError:  # the client gave up: what the tests want
            pass


class _Server:
    def __init__(self, directory: Path):
        self.stop = threading.Event()
        self.requests: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(_Handler, directory=str(directory)))
        self.httpd.behaviours = {}
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def on(self, name: str, behaviour) -> None:
        def counted(handler):
            self.requests[name] = self.requests.get(name, 0) + 1
            behaviour(self, name, handler)

        self.httpd.behaviours[name] = counted

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    """Factory: ``server(directory) -> _Server`` (``.url``, ``.on(filename, behaviour)``)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    servers = []

    def make(directory: Path) -> _Server:
        servers.append(_Server(directory))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _headers(handler, length=None):
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    if length is not None:
        handler.send_header("Content-Length", str(length))
    handler.end_headers()
    handler.wfile.flush()


def trickle(interval: float):
    """The right headers, then one byte every ``interval`` seconds."""
    def behaviour(server, name, handler):
        data = (Path(handler.directory) / name).read_bytes()
        _headers(handler, len(data))
        for i in range(len(data)):
            if server.stop.wait(interval):
                return
            handler.wfile.write(data[i:i + 1])
            handler.wfile.flush()
    return behaviour


def stall(times: int = 1_000_000):
    """The first ``times`` requests get nothing at all (not even headers); later ones the file."""
    def behaviour(server, name, handler):
        if server.requests[name] <= times:
            server.stop.wait(10)
            return
        http.server.SimpleHTTPRequestHandler.do_GET(handler)
    return behaviour


def flood(total: int, announce=None):
    """Far more than the file: ``total`` bytes (Content-Length ``announce``, or none)."""
    def behaviour(server, name, handler):
        _headers(handler, announce)
        chunk = b"\0" * 65536
        server.sent[name] = 0
        while server.sent[name] < total and not server.stop.is_set():
            handler.wfile.write(chunk)
            server.sent[name] += len(chunk)
    return behaviour


def reset(times: int):
    """The first ``times`` connections are reset (RST) before any answer; later ones get the file."""
    def behaviour(server, name, handler):
        if server.requests[name] <= times:
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.connection.close()
            handler.close_connection = True
            return
        http.server.SimpleHTTPRequestHandler.do_GET(handler)
    return behaviour


def _refused_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ----------------------------------------------------------------------------- reader: one file
def test_a_trickling_shard_ends_at_its_per_file_deadline(shard_dataset, server, tmp_path, monkeypatch):
    """1 byte per 0.2 s on every read: before, each read met the per-socket timeout and the fetch
    went on for hours; now the file has a deadline (HTTP_TIMEOUT_S + size at the minimum rate)."""
    directory, index, _ = shard_dataset
    monkeypatch.setattr(transfer, "HTTP_TIMEOUT_S", 1.0)
    s = server(directory)
    s.on(index.shards[0].filename, trickle(0.2))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"{s.url}/{index.shards[0].filename}"):
        fetch(s.url, tmp_path / "copy" / "r0")
    assert time.monotonic() - started < 5
    assert _leftovers(tmp_path / "copy") == []  # the partial download is gone


def test_fetch_has_a_wall_clock_budget(shard_dataset, server, tmp_path):
    directory, index, _ = shard_dataset
    s = server(directory)
    s.on(index.shards[1].filename, trickle(0.2))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"{index.shards[1].filename}.*in time"):
        fetch(s.url, tmp_path / "copy" / "r0", timeout_s=1.5)
    assert 1.4 < time.monotonic() - started < 4
    assert _leftovers(tmp_path / "copy") == []


@pytest.mark.parametrize("announce", [None, 400_000_000], ids=["no-length", "400MB-length"])
def test_a_flood_is_cut_one_byte_past_the_index_size(shard_dataset, server, tmp_path, announce):
    """Before, the whole body went to disk and only then was its size compared with the index."""
    directory, index, _ = shard_dataset
    shard = index.shards[0]
    s = server(directory)
    s.on(shard.filename, flood(64 << 20, announce))
    with pytest.raises(FormatError, match=f"size is over {shard.size_bytes} bytes, index says {shard.size_bytes}"):
        fetch(s.url, tmp_path / "copy" / "r0")
    time.sleep(0.2)  # let the server notice the closed connection
    assert s.sent[shard.filename] < 8 << 20  # socket buffers at most; not the 64 MB
    assert _leftovers(tmp_path / "copy") == []


def test_a_stalled_server_is_a_timeout_naming_the_url(shard_dataset, server, monkeypatch):
    directory, _, _ = shard_dataset
    monkeypatch.setattr(transfer, "HTTP_TIMEOUT_S", 0.5)
    s = server(directory)
    s.on("index.json", stall())
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"{s.url}/index.json"):
        read_index(s.url)
    assert time.monotonic() - started < 3


def test_a_refused_connection_is_retried_then_reported_as_cannot_connect(monkeypatch):
    monkeypatch.setattr(transfer, "HTTP_TIMEOUT_S", 1.0)  # how long connections are retried
    url = _refused_url()
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"{url}/index.json: cannot connect .*[2-9] tries"):
        read_index(url)
    assert 0.5 < time.monotonic() - started < 3


def test_reset_connections_are_retried(shard_dataset, server):
    directory, index, _ = shard_dataset
    s = server(directory)
    s.on("index.json", reset(2))
    assert read_index(s.url) == index
    assert s.requests["index.json"] == 3


# ------------------------------------------------------------------------ trainer: the wait loop
def test_a_refused_connection_is_not_reported_as_not_finished(monkeypatch):
    monkeypatch.setattr(transfer, "HTTP_TIMEOUT_S", 1.0)  # how long connections are retried
    url = _refused_url()
    with pytest.raises(ConnectionError, match=f"round 3's synthetic data set at {url} cannot be reached"):
        wait_until_finished(url, SyntheticConfig(on_missing="error", timeout_s=1.0), round=3)


def test_a_stalled_first_poll_does_not_end_the_wait(shard_dataset, server, monkeypatch):
    """Before, the first poll's socket timeout escaped the wait loop: on_missing: wait ended there."""
    directory, _, _ = shard_dataset
    monkeypatch.setattr(transfer, "HTTP_TIMEOUT_S", 0.5)
    s = server(directory)
    s.on("index.json", stall(times=1))
    cfg = SyntheticConfig(on_missing="wait", timeout_s=10, poll_s=0.1)
    assert wait_until_finished(s.url, cfg, round=0) is True
    assert s.requests["index.json"] == 2


def test_wait_timeout_is_wall_clock_even_while_a_read_trickles(shard_dataset, server):
    """Before, one poll of a trickling index.json took as long as the server liked."""
    directory, _, _ = shard_dataset
    s = server(directory)
    s.on("index.json", trickle(0.2))
    cfg = SyntheticConfig(on_missing="wait", timeout_s=1.5, poll_s=0.1)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"synthetic.timeout_s"):
        wait_until_finished(s.url, cfg, round=0)
    assert time.monotonic() - started < 4


def test_a_round_download_is_bounded_by_synthetic_timeout(tmp_path, write_digit_shards, server):
    """The round's budget covers the download too; nothing is left in the run's pool folder."""
    from actgen.shards.sources import DIGIT_NAMES
    from actgen.trainer.synthetic import obtain

    source = write_digit_shards(tmp_path / "builder" / "r0", n=8)
    s = server(source)
    s.on(sorted(p.name for p in source.glob("*.tar"))[0], trickle(0.2))
    cfg = SyntheticConfig(on_missing="wait", timeout_s=1.5, poll_s=0.1)
    run_dir = tmp_path / "run"
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="could not be fetched by the deadline"):
        obtain(s.url, run_dir, round=0, epoch=1, class_names=list(DIGIT_NAMES), cfg=cfg)
    assert time.monotonic() - started < 4
    assert _leftovers(run_dir / "synthetic") == []


def test_a_round_server_that_comes_back_is_fetched(tmp_path, write_digit_shards, server):
    from actgen.shards.sources import DIGIT_NAMES
    from actgen.trainer.synthetic import obtain

    source = write_digit_shards(tmp_path / "builder" / "r0", n=8)
    s = server(source)
    shard = sorted(p.name for p in source.glob("*.tar"))[1]
    s.on(shard, reset(1))
    cfg = SyntheticConfig(on_missing="wait", timeout_s=20, poll_s=0.1)
    entry = obtain(s.url, tmp_path / "run", round=0, epoch=1, class_names=list(DIGIT_NAMES), cfg=cfg)
    assert entry.num_samples == 8 and s.requests[shard] == 2
    assert _leftovers(tmp_path / "run" / "synthetic") == ["round-0000"]
    assert os.path.isfile(tmp_path / "run" / entry.directory / "index.json")


# ------------------------------------------------------------- failures classified before retries
def test_a_refused_connection_gets_a_short_retry_each_logged_with_its_cause(caplog):
    # The full connection timeout stays at its default: a refusal is retried for seconds only.
    url = _refused_url()
    started = time.monotonic()
    with caplog.at_level("INFO", logger="actgen.shards.transfer"):
        with pytest.raises(ConnectionError, match=rf"{url}/index.json: cannot connect \(connection refused; "):
            read_index(url)
    assert time.monotonic() - started < transfer.HTTP_REFUSED_RETRY_S + 2
    retries = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert retries and all("connection refused" in m for m in retries)


def test_an_unknown_host_is_reported_at_once_and_never_waited_for(monkeypatch):
    from actgen.shards.errors import Unreachable

    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    url = "http://no-such-host.example/sets/round-0"
    started = time.monotonic()
    with pytest.raises(Unreachable, match="unknown host"):
        read_index(url)
    cfg = SyntheticConfig(on_missing="wait", timeout_s=600, poll_s=0.1)
    with pytest.raises(Unreachable, match=r"round 0's .* cannot be reached .*unknown host.*waiting cannot help"):
        wait_until_finished(url, cfg, round=0)
    assert time.monotonic() - started < 2


def test_a_refusal_under_a_short_wait_is_named_a_refusal_not_a_slow_download():
    url = _refused_url()
    cfg = SyntheticConfig(on_missing="wait", timeout_s=1.5, poll_s=0.2)
    with pytest.raises(TimeoutError) as e:
        wait_until_finished(url, cfg, round=0)
    assert "connection refused" in str(e.value) and "not finished in time" not in str(e.value)
