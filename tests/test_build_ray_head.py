"""A Ray head the build did not start: ``ray start --head`` on loopback (bounded, always stopped),
``actgen-build`` joins it with ``ray.address``, the data set verifies, the build's actors are gone
afterwards (every CPU of the cluster free again) and the head itself is left running."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import ray_env as _env

from actgen.shards.sources import DIGIT_NAMES
from actgen.shards.verify import verify

pytestmark = pytest.mark.slow


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
