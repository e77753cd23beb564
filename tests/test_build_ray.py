"""``run(cfg)`` on Ray actor pools: one worker and two give the same keys (and, with one
memory bank per shard, the same bytes); a build killed midway and rerun ends complete; the CLI
smoke config runs end to end."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from actgen.builder.cli import main
from actgen.builder.config import load_config
from actgen.builder.pipeline import run
from actgen.shards.reader import ShardRandomAccess
from actgen.shards.sources import DIGIT_NAMES
from actgen.shards.verify import verify
from actgen.shards.writer import INDEX_FILE, file_sha256


pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module (run() joins a Ray this process already started)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _keys(directory) -> list[str]:
    data = ShardRandomAccess(directory)
    return [data.key(i) for i in range(len(data))]


def _shas(directory) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(Path(directory).glob("synth-*.tar"))}


def test_killed_build_is_finished_by_a_rerun(ray_cluster, build_config, build_round, build_fast, tmp_path):
    out = tmp_path / "shards"
    sets = [f"--set={s}" for s in (*build_fast, "budget=12", "guidance.num_steps=6", "guidance.reference_steps=6")]
    cmd = [sys.executable, "-m", "actgen.builder.cli", "--round-dir", str(build_round), "--output", str(out), *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "synth-000000.tar").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no shard appeared within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    before = _shas(out)
    assert not (out / INDEX_FILE).exists() and 1 <= len(before) < 6, sorted(before)
    with pytest.raises(ValueError, match="no finished data set"):
        verify(out)

    cfg = build_config("budget=12", "guidance.num_steps=6", "guidance.reference_steps=6", "ray.executor=ray",
                       "ray.workers=2", output=out)
    result = run(cfg)
    assert sorted(result.kept) == sorted(before)          # complete shards are kept as they are
    assert len(result.rendered) == 6 - len(before)
    report = verify(out, class_names=list(DIGIT_NAMES))   # also rejects duplicate keys
    assert report.num_samples == 12 and len(set(_keys(out))) == 12
    assert {k: v for k, v in _shas(out).items() if k in before} == before


def test_cli_smoke_config_and_two_workers_write_what_one_worker_writes(ray_cluster, build_round, tmp_path):
    fast = ["guidance.num_steps=4", "guidance.reference_steps=4"]
    # 1. The smoke config through the CLI: two CPU actors.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = CliRunner().invoke(main, ["--config", str(CONFIGS / "build-smoke.yaml"), "--round-dir",
                                           str(build_round), "--output", str(tmp_path / "two"),
                                           *[a for s in fast for a in ("--set", s)]], catch_exceptions=False)
    finally:
        root.handlers[:], root.level = handlers, level
    assert result.exit_code == 0, result.output
    assert "16 images in 4 shards (4 rendered, 0 kept)" in result.stdout
    assert verify(tmp_path / "two", class_names=list(DIGIT_NAMES)).num_samples == 16
    assert (tmp_path / "two" / "contact_sheet.png").is_file()
    # 2. The same settings on one actor: the same keys and, with every shard starting from the
    #    earlier rounds' bank (bank_scope=run in the smoke config; none here), the same bytes.
    cfg = load_config(CONFIGS / "build-smoke.yaml", [
        f"checkpoint={build_round / 'checkpoint'}", f"manifest={build_round / 'hard_samples.json'}",
        f"output.path={tmp_path / 'one'}", "ray.workers=1", *fast])
    assert cfg.bank_scope == "run"
    one = run(cfg)
    assert len(one.rendered) == 4
    assert _keys(tmp_path / "one") == _keys(tmp_path / "two")
    assert _shas(tmp_path / "one") == _shas(tmp_path / "two")


def test_a_failing_worker_gives_one_error_naming_the_cause(ray_cluster, build_config, tiny_generator, tmp_path):
    # Every component is there (the driver's check passes), but the UNet config does not parse:
    # only the workers find out, and the driver reports their error, not Ray's wrappers.
    tiny_generator.save_pretrained(tmp_path / "sd")
    (tmp_path / "sd" / "unet" / "config.json").write_text("{not json")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"^a Ray worker failed: RuntimeError: .*sd: cannot load component 'unet'"):
        run(build_config("ray.executor=ray", f"generator.path={tmp_path / 'sd'}", output=out))
    assert not (out / INDEX_FILE).exists() and not list(out.glob("*.tar"))


def test_a_pool_keeps_its_workers_and_their_generator_across_rounds(ray_cluster, write_round, build_fast, tmp_path):
    # Three rounds through one WorkerPool (what --watch and --serve hold): the same two actors
    # render all of them, and each loads the generator (and hashes its weights) once.
    from actgen.builder.workers import WorkerPool

    def round_cfg(r):
        directory, _ = write_round(tmp_path / "rounds" / str(r), round=r, weights_seed=r)
        return load_config(None, [f"checkpoint={directory / 'checkpoint'}",
                                  f"manifest={directory / 'hard_samples.json'}",
                                  f"output.path={directory / 'shards'}", *build_fast, "budget=4",
                                  "output.samples_per_shard=1", "ray.executor=ray", "ray.workers=2",
                                  "ray.cpus_per_worker=1", "bank_scope=run"])

    with WorkerPool() as pool:
        actors = None
        for r in range(3):
            result = run(round_cfg(r), pool=pool)
            assert len(result.rendered) == 4
            actors = actors or list(pool._actors)
            assert pool._actors == actors                      # the same actors, round after round
        loads = pool.worker_loads()
    assert len(loads) == 2 and all(x["generator"] == 1 for x in loads)
    for r in range(3):
        verify(tmp_path / "rounds" / str(r) / "shards", class_names=list(DIGIT_NAMES))


@pytest.mark.timeout(600)
def test_a_pool_recovers_from_a_failed_round(ray_cluster, build_config, tiny_generator, tmp_path):
    # A round whose workers fail ends them (alive ones would keep holding the cluster's CPUs and
    # the next round would wait for ever); the next round through the same pool completes.
    from actgen.builder.workers import WorkerPool

    tiny_generator.save_pretrained(tmp_path / "sd")
    (tmp_path / "sd" / "unet" / "config.json").write_text("{not json")
    sets = ("ray.executor=ray", "ray.workers=2", "ray.cpus_per_worker=1")
    with WorkerPool() as pool:
        with pytest.raises(RuntimeError, match="cannot load component 'unet'"):
            run(build_config(*sets, f"generator.path={tmp_path / 'sd'}", output=tmp_path / "bad"), pool=pool)
        assert pool._actors == []
        good = run(build_config(*sets, output=tmp_path / "good"), pool=pool)
    assert len(good.rendered) == 3
    assert verify(tmp_path / "good", class_names=list(DIGIT_NAMES)).num_samples == 6


@pytest.mark.timeout(600)
def test_a_watcher_whose_worker_is_killed_mid_shard_finishes_with_identical_bytes(
        ray_cluster, write_round, build_fast, tmp_path):
    # A --watch builder with two Ray workers; one worker process is SIGKILLed while it renders a
    # shard (as the OOM killer or a lost node would). Ray starts the worker again, the shard is
    # rendered again, and the round ends with the bytes of a build nobody disturbed.
    import dataclasses
    import shutil

    import psutil

    from actgen.shards.manifest import read_manifest, write_manifest
    from actgen.shards.rounds import read_status

    run_dir = tmp_path / "run"
    directory, _ = write_round(run_dir / "rounds" / "0", round=0)
    manifest = read_manifest(directory / "hard_samples.json")     # one round: the watcher stops after it
    write_manifest(directory / "hard_samples.json",
                   dataclasses.replace(manifest, header=dataclasses.replace(manifest.header, num_rounds=1)))
    reference = shutil.copytree(directory, tmp_path / "reference" / "0")
    sets = [s for s in build_fast if not s.startswith("ray.")] + [
        "budget=12", "guidance.num_steps=8", "guidance.reference_steps=8", "ray.executor=ray", "ray.workers=2",
        "ray.cpus_per_worker=1", "ray.num_cpus=2"]
    cmd = [sys.executable, "-m", "actgen.builder.cli", "--watch", str(run_dir), "--poll", "0.2",
           "--idle-timeout", "300", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed = None
    try:
        out = directory / "shards"
        deadline = time.monotonic() + 300
        while killed is None:                 # after a first shard, a worker busy with the next one
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no worker was seen rendering a shard"
            if list(out.glob("synth-*.tar")):
                for p in psutil.Process(proc.pid).children(recursive=True):
                    try:
                        if "_ShardActor.write" in " ".join(p.cmdline()):
                            killed = p.pid
                            p.kill()
                            break
                    except psutil.Error:
                        continue
            time.sleep(0.02)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    log = output.decode()
    assert proc.returncode == 0, log
    assert "its worker died" in log and "rendering it again (retry 1 of 2)" in log, log
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    status = read_status(directory)
    assert (status.state, status.images) == ("done", 12)
    assert verify(out, class_names=list(DIGIT_NAMES)).num_samples == 12
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]   # no temporary left behind

    cfg = load_config(None, [f"checkpoint={reference / 'checkpoint'}", f"manifest={reference / 'hard_samples.json'}",
                             f"output.path={reference / 'shards'}", "output.overwrite=true", *sets])
    run(cfg)
    assert _shas(out) == _shas(reference / "shards") and len(_shas(out)) == 6
