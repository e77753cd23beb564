"""A Ray head the build did not start: ``ray start --head`` on loopback (bounded, always stopped),
``actgen-build`` joins it with ``ray.address``, the data set verifies, the build's actors are gone
afterwards (every CPU of the cluster free again) and the head itself is left running."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from actgen.shards.sources import DIGIT_NAMES
from actgen.shards.verify import verify

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).parent / "ray"


_TOKEN = secrets.token_hex(16)


def _env(**extra) -> dict:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _TOKEN, **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """``ray start --head`` on 127.0.0.1 with 2 CPUs; ``ray stop --force`` afterwards, whatever happened."""
    if not RAY.is_file():
        pytest.skip(f"{RAY} absent")
    port = _free_port()
    # Ray >= 2.59 authenticates with a token; a cluster's nodes and drivers share it (the
    # environment, as on a real cluster). Ray's socket paths live under its temp dir and may not exceed 107 bytes: a short one.
    temp = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")
    env = _env()
    subprocess.run([str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                   check=True, timeout=180, env=env, stdout=subprocess.DEVNULL)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop", "--force"], timeout=120, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(temp, ignore_errors=True)


def _cluster_cpus(address: str) -> tuple[float, float]:
    """(total, available) CPUs of the cluster, read by a separate short-lived driver."""
    code = ("import ray, time; ray.init(address=%r, configure_logging=False, log_to_driver=False); "
            "time.sleep(1); print(ray.cluster_resources().get('CPU', 0), ray.available_resources().get('CPU', 0))"
            % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env=_env())
    total, available = out.stdout.split()[-2:]
    return float(total), float(available)


def test_a_build_joins_a_ray_head_it_did_not_start_and_leaves_nothing_running(ray_head, build_round, build_fast,
                                                                              tmp_path):
    out = tmp_path / "shards"
    sets = [*build_fast, "ray.executor=ray", f"ray.address={ray_head}", "ray.workers=2", "ray.cpus_per_worker=1",
            "budget=4", "output.samples_per_shard=1"]
    cmd = [sys.executable, "-m", "actgen.builder.cli", "--round-dir", str(build_round), "--output", str(out),
           *[a for s in sets for a in ("--set", s)]]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env=_env(OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify(out, class_names=list(DIGIT_NAMES)).num_samples == 4
    # The head still runs (the build did not shut down a cluster it joined), and none of the
    # build's actors holds a CPU any more. Actor teardown is asynchronous: allow it a moment.
    deadline = time.monotonic() + 60
    while True:
        total, available = _cluster_cpus(ray_head)
        if available == total or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert total == 2 and available == 2
