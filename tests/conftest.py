"""Shared pytest fixtures. Sections are owned by the package they serve; append, don't rewrite."""
from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest


# --------------------------------------------------------------------------------------------
# shards: tiny synthetic samples, a finished shard data set, a local HTTP server

SHARDS_CLASS_NAMES = ["cat", "dog", "bird"]


def _make_synthetic_samples(n: int, class_names=SHARDS_CLASS_NAMES, size=(12, 16), round: int = 1,
                            seed: int = 0) -> list:
    """``n`` SyntheticSample with random RGB images (H, W = ``size``) and full provenance."""
    from PIL import Image

    from actgen.shards.samples import SyntheticSample, make_key

    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        label = i % len(class_names)
        source_id = f"{'ab' * 6}-{i:08d}"
        pixels = rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
        provenance = {
            "class_name": class_names[label], "source_id": source_id,
            "generator": {"id": "tiny-test", "weights_sha256": "0" * 64},
            "prompt": f"a photo of a {class_names[label]}", "seed": 1000 + i,
            "guidance": {"scale": 1.5, "steps": 2}, "checkpoint_sha256": "1" * 64,
            "round": round, "tool_version": "test",
        }
        samples.append(SyntheticSample(key=make_key(round, source_id, i, 1000 + i),
                                       image=Image.fromarray(pixels, "RGB"), label=label,
                                       provenance=provenance))
    return samples


@pytest.fixture
def make_synthetic_samples():
    """Factory: ``make_synthetic_samples(n, class_names=..., size=(H, W), round=1, seed=0)``."""
    return _make_synthetic_samples


@pytest.fixture
def shard_dataset(tmp_path):
    """A finished data set: 10 PNG samples of 3 classes in 3 shards -> ``(directory, index, samples)``."""
    from actgen.shards.writer import ShardSetWriter

    directory = tmp_path / "synth"
    samples = _make_synthetic_samples(10)
    writer = ShardSetWriter(directory, SHARDS_CLASS_NAMES, total=len(samples), num_shards=3,
                            created={"round": 1})
    for sample in samples:
        writer.write(sample)
    index = writer.close()
    return directory, index, samples


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass


@pytest.fixture
def serve_directory(monkeypatch):
    """Factory: ``serve_directory(path) -> "http://127.0.0.1:PORT"`` (threaded server, stopped after the test)."""
    # curl (WebDataset) and urllib must not send loopback requests to a proxy.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    servers = []

    def serve(path: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(path))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


