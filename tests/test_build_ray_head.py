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


@pytest.fixture
def ray_two_nodes(ray_head_one_cpu):
    """A second Ray node (1 CPU) joined to a 1-CPU head on loopback: a two-node cluster."""
    from pathlib import Path

    ray = Path(sys.executable).parent / "ray"
    subprocess.run([str(ray), "start", f"--address={ray_head_one_cpu}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                    "--disable-usage-stats"], check=True, timeout=180, env=_env(), stdout=subprocess.DEVNULL)
    yield ray_head_one_cpu       # `ray stop --force` in the head's fixture stops both nodes


@pytest.fixture
def ray_head_one_cpu():
    from conftest import ray_head_cluster

    with ray_head_cluster(1) as address:
        yield address


def test_the_two_node_recipe_renders_on_both_nodes(ray_two_nodes, build_round, build_fast, tmp_path):
    """docs/cluster.md's recipe on loopback: a head, a second node joining it, and a build that
    asks for two 1-CPU workers, which only both nodes together can hold."""
    total, _ = _cluster_cpus(ray_two_nodes)
    assert total == 2
    out = tmp_path / "shards"
    sets = [*build_fast, "ray.executor=ray", f"ray.address={ray_two_nodes}", "ray.workers=2",
            "ray.cpus_per_worker=1", "budget=4", "output.samples_per_shard=1"]
    result = subprocess.run([sys.executable, "-m", "actgen.builder.cli", "--round-dir", str(build_round), "--output",
                             str(out), *[a for s in sets for a in ("--set", s)]],
                            capture_output=True, text=True, timeout=600, env=_env(OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify(out, class_names=list(DIGIT_NAMES)).num_samples == 4
