"""Hardening, builder side and across the CLIs: each bad input or failure is one line naming the
file and field, exit 2 for bad input and 1 for a failure, nothing half-written; no file from
someone else is ever unpickled; one watcher per run directory and one build per output folder;
a manifest never chooses what the builder reads."""
from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from actgen.builder.cli import main as build_main

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "build-smoke.yaml")


class _Marker:
    """Unpickling this creates ``path``: the stand-in for code a crafted pickle would run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _crafted(path: Path, marker: Path) -> Path:
    """A torch file whose unpickling creates ``marker``; proven live on a probe copy first."""
    probe, probe_marker = marker.with_name(marker.name + "-probe.pt"), marker.with_name(marker.name + "-probe")
    torch.save({"weights": _Marker(probe_marker)}, probe)
    torch.load(probe, weights_only=False)           # unrestricted: it runs
    assert probe_marker.exists()
    probe_marker.unlink()
    torch.save({"weights": _Marker(marker)}, path)
    return path


def _invoke(main, *args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _one_line(result, prog: str, code: int, *fragments: str) -> str:
    """The run ended with ``code`` and its stderr's last line is its only ``<prog>:`` line."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    ours = [ln for ln in result.stderr.splitlines() if ln.startswith(f"{prog}:")]
    assert len(ours) == 1, result.stderr
    kind = "error" if code == 2 else "failed"
    assert ours[0].startswith(f"{prog}: {kind}: "), ours[0]
    assert ours[0] == result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in ours[0], ours[0]
    return ours[0]


def _build(round_dir, output, build_fast, *sets: str, extra: tuple[str, ...] = ()):
    args = ["--round-dir", round_dir, "--output", output, *extra]
    for s in (*build_fast, "budget=4", *sets):
        args += ["--set", s]
    return _invoke(build_main, *args)


def _copy_round(build_round, directory: Path) -> Path:
    shutil.copytree(build_round, directory)
    return directory


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# -- configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, got", [("- budget: 3\n- seed: 1\n", "a list"), ("42\n", "int")])
def test_a_config_that_is_no_mapping_is_named(text, got, build_round, tmp_path, build_fast):
    config = tmp_path / "build.yaml"
    config.write_text(text)
    result = _build(build_round, tmp_path / "out", build_fast, extra=("--config", config))
    _one_line(result, "actgen-build", 2, f"{config}: expected a mapping of config keys at the top level, got {got}")
    assert not (tmp_path / "out").exists()


# -- the classifier bundle -----------------------------------------------------------------------


@pytest.mark.parametrize("target", ["pickle", "junk"])
def test_bundle_model_kwargs_cannot_load_a_file(target, build_round, tmp_path, build_fast):
    round_dir = _copy_round(build_round, tmp_path / "round")
    marker = tmp_path / "pwned"
    file = tmp_path / "weights.pt"
    if target == "pickle":
        _crafted(file, marker)
    else:
        file.write_bytes(b"not a checkpoint at all")
    _edit_json(round_dir / "checkpoint" / "config.json",
               lambda d: d.update(model_kwargs={"in_chans": 3, "checkpoint_path": str(file)}))
    result = _build(round_dir, tmp_path / "out", build_fast)
    _one_line(result, "actgen-build", 2, str(round_dir / "checkpoint" / "config.json"),
              "field 'model_kwargs.checkpoint_path'", "not allowed")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_bundle_model_kwargs_the_model_rejects_are_named(build_round, tmp_path, build_fast):
    round_dir = _copy_round(build_round, tmp_path / "round")
    _edit_json(round_dir / "checkpoint" / "config.json", lambda d: d.update(model_kwargs={"no_such_kwarg": 1}))
    _one_line(_build(round_dir, tmp_path / "out", build_fast), "actgen-build", 2, "config.json: field 'model_kwargs'",
              "rejected by test_resnet")
    assert not (tmp_path / "out").exists()


def test_bundle_weights_that_are_a_pickle_are_refused_unread(build_round, tmp_path, build_fast):
    round_dir = _copy_round(build_round, tmp_path / "round")
    marker = tmp_path / "pwned"
    _crafted(round_dir / "checkpoint" / "model.safetensors", marker)
    _one_line(_build(round_dir, tmp_path / "out", build_fast), "actgen-build", 2,
              f"{round_dir / 'checkpoint' / 'model.safetensors'}: not a readable safetensors file")
    assert not marker.exists() and not (tmp_path / "out").exists()


# -- the generator folder ----------------------------------------------------------------------


@pytest.mark.parametrize("component, stem", [("unet", "diffusion_pytorch_model"), ("text_encoder", "model")])
def test_generator_weights_in_a_pickle_are_refused_unread(component, stem, build_round, tiny_generator, tmp_path,
                                                          build_fast):
    from actgen.builder.generator import DiffusersGenerator

    sd = tmp_path / "sd"
    tiny_generator.save_pretrained(sd)
    (sd / component / f"{stem}.safetensors").unlink()
    marker = tmp_path / "pwned"
    _crafted(sd / component / ("diffusion_pytorch_model.bin" if component == "unet" else "pytorch_model.bin"), marker)
    result = _build(build_round, tmp_path / "out", build_fast, f"generator.path={sd}")
    _one_line(result, "actgen-build", 2, f"{sd / component}: no {stem}.safetensors", "pickles, which are never loaded")
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The loader itself never falls back to the pickle either (fitting's LoRA base loads through it).
    with pytest.raises((FileNotFoundError, RuntimeError), match=f"{component}"):
        DiffusersGenerator.from_pretrained(str(sd), device="cpu", dtype="float32")
    assert not marker.exists()


# -- the trainer's files -----------------------------------------------------------------------


def test_trainer_last_pt_with_pickled_code_is_refused_unread(tiny_train_config, tmp_path):
    from actgen.trainer.cli import main as train_main
    from actgen.trainer.config import config_to_yaml

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(config_to_yaml(tiny_train_config(run_dir=run_dir)))
    marker = tmp_path / "pwned"
    _crafted(run_dir / "last.pt", marker)
    result = _invoke(train_main, "--run-dir", run_dir, "--resume")
    _one_line(result, "actgen-train", 2, f"{run_dir / 'last.pt'}: refused: not a plain-tensor checkpoint "
                                         "(Unsupported global: GLOBAL io.open")
    # torch's advice to turn weights_only off is never passed on; the real reason is.
    assert "weights_only=False" not in result.output and "weights_only` set to `False" not in result.output
    assert not marker.exists()


def test_trainer_initial_weights_with_pickled_code_are_refused_unread(tmp_path):
    from actgen.trainer.cli import main as train_main

    marker = tmp_path / "pwned"
    weights = _crafted(tmp_path / "init.pt", marker)
    sets = ["data.source.path=builtin:digits", "model.name=test_resnet", "input.image_size=16",
            f"model.initial_weights={weights}", "train.device=cpu"]
    result = _invoke(train_main, "--config", Path(SMOKE).with_name("train-digits.yaml"), "--run-dir", tmp_path / "run",
                     *[a for s in sets for a in ("--set", s)])
    _one_line(result, "actgen-train", 2, f"{weights}: refused: not a plain-tensor weights file")
    assert "set to `False" not in result.output
    assert not marker.exists() and not (tmp_path / "run").exists()


# -- what a manifest may point the builder at ------------------------------------------------------


def test_a_manifest_cannot_make_the_builder_read_an_arbitrary_path(build_round, tmp_path, build_fast, monkeypatch):
    import actgen.builder.inputs as inputs

    round_dir = _copy_round(build_round, tmp_path / "round")
    _edit_json(round_dir / "hard_samples.json", lambda d: d["header"]["dataset"].update(path="/usr"))
    loaded = []
    monkeypatch.setattr(inputs, "load_source", lambda source: loaded.append(source) or pytest.fail("read"))
    start = time.monotonic()
    result = _build(round_dir, tmp_path / "out", build_fast)
    _one_line(result, "actgen-build", 2, f"{round_dir / 'hard_samples.json'}: field 'header.dataset.path' = '/usr'",
              "config key 'dataset'", "data_roots")
    assert loaded == [] and time.monotonic() - start < 30
    assert not (tmp_path / "out").exists()


def test_data_roots_admit_only_paths_inside_them(build_round, tmp_path):
    from actgen.builder.inputs import load_dataset
    from actgen.shards.errors import FormatError
    from actgen.shards.manifest import read_manifest
    from actgen.shards.sources import digits_dataset

    digits_dataset().save_to_disk(str(tmp_path / "data" / "digits"))
    shutil.copytree(tmp_path / "data" / "digits", tmp_path / "elsewhere")
    (tmp_path / "data" / "link").symlink_to(tmp_path / "elsewhere")
    manifest_path = tmp_path / "hard_samples.json"
    original = json.loads((build_round / "hard_samples.json").read_text())

    def load(path: str, roots):
        original["header"]["dataset"]["path"] = path
        manifest_path.write_text(json.dumps(original))
        return load_dataset(None, read_manifest(manifest_path), manifest_path, roots)

    roots = [str(tmp_path / "data")]
    assert len(load(str(tmp_path / "data" / "digits"), roots)) == 1797           # inside: read
    assert len(load("builtin:digits", [])) == 1797                                 # embedded: always
    for path in (str(tmp_path / "data" / "link"), f"{tmp_path}/data/../elsewhere", str(tmp_path / "elsewhere")):
        with pytest.raises(FormatError, match=r"field 'header.dataset.path' .* is not inside 'data_roots'"):
            load(path, roots)
    with pytest.raises(FormatError, match="config key 'dataset' is null with no 'data_roots'"):
        load(str(tmp_path / "data" / "digits"), [])
    with pytest.raises(FormatError, match="not a local path inside 'data_roots'"):
        load("someone/dataset", roots)                                              # a hub name: a download
    # The configured data set is read whatever the manifest says (its fingerprint still decides).
    from actgen.shards.sources import DataSource

    original["header"]["dataset"]["path"] = "/usr"
    manifest_path.write_text(json.dumps(original))
    images = load_dataset(DataSource(path=str(tmp_path / "elsewhere")), read_manifest(manifest_path), manifest_path)
    assert len(images) == 1797


def test_an_out_of_range_row_is_named_before_anything_is_written(build_round, tmp_path, build_fast):
    round_dir = _copy_round(build_round, tmp_path / "round")

    def edit(d):
        fp12 = d["header"]["dataset_fingerprint"][:12]
        d["samples"][2]["id"] = f"{fp12}-00099999"
    _edit_json(round_dir / "hard_samples.json", edit)
    _one_line(_build(round_dir, tmp_path / "out", build_fast), "actgen-build", 2,
              f"{round_dir / 'hard_samples.json'}: field 'samples[2].id'", "row 99999 is out of range",
              "1797 rows")
    assert not (tmp_path / "out").exists()


# -- failures at run time --------------------------------------------------------------------------


@pytest.mark.parametrize("limit, victim", [(1000, "build.json"), (20_000, "synth-000000.tar")])
def test_a_failed_write_names_the_file_and_exits_1(limit, victim, build_round, tmp_path, build_fast, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))    # where the traceback log would go
    out = tmp_path / "out"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Files may grow to `limit` bytes: build.json (~3 kB) fits 20 kB, a shard of 96x96 PNGs does not.
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        result = _build(build_round, out, build_fast, "output.resize=fixed", "output.size=96",
                        "output.contact_sheet=0")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    _one_line(result, "actgen-build", 1, f"{out / victim}: cannot write (File too large)")
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") or p.name == "index.json"]
    assert leftovers == []                                  # no temporary, no index


def test_an_unexpected_exception_is_one_line_with_its_traceback_in_a_log(build_round, tmp_path, build_fast,
                                                                         monkeypatch):
    import actgen.builder.pipeline as pipeline

    def broken(cfg):
        return {}["no-such-key"]

    monkeypatch.setattr(pipeline, "run", broken)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    result = _invoke(build_main, "--checkpoint", build_round / "checkpoint", "--manifest",
                     build_round / "hard_samples.json", "--output", tmp_path / "out")
    line = _one_line(result, "actgen-build", 1, "KeyError: 'no-such-key'", "(traceback in ")
    log = Path(line.split("(traceback in ", 1)[1].split(";", 1)[0])
    assert log.parent == tmp_path and "Traceback" in log.read_text() and "broken" in log.read_text()
    # --debug: the traceback on stderr instead, still one closing line.
    debug = _invoke(build_main, "--debug", "--checkpoint", build_round / "checkpoint", "--manifest",
                    build_round / "hard_samples.json", "--output", tmp_path / "out")
    assert debug.exit_code == 1 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == "actgen-build: failed: KeyError: 'no-such-key'"


def test_cli_errors_statuses():
    import errno

    import click

    from actgen.shards.errors import cli_errors

    def status(exc: BaseException) -> tuple[int, str]:
        @click.command()
        def cmd():
            with cli_errors("prog", verbose=True):
                raise exc
        result = CliRunner().invoke(cmd, [])
        return result.exit_code, result.stderr.strip().splitlines()[-1]

    assert status(ValueError("x.yaml: bad")) == (2, "prog: error: x.yaml: bad")
    assert status(FileNotFoundError(2, "No such file or directory", "a.json")) == (
        2, "prog: error: [Errno 2] No such file or directory: 'a.json'")
    assert status(OSError(errno.ENOSPC, "No space left on device")) == (
        1, "prog: failed: [Errno 28] No space left on device")
    assert status(RuntimeError("CUDA out of memory")) == (1, "prog: failed: CUDA out of memory")
    assert status(TypeError("unsupported operand")) == (1, "prog: failed: TypeError: unsupported operand")
    assert status(KeyboardInterrupt()) == (130, "prog: interrupted")


def test_a_command_run_in_process_leaves_sigterm_as_it_found_it():
    """Inside a command SIGTERM stops it cleanly (exit 143); once it returns, or fails, the caller's
    own SIGTERM handling is back (a notebook, a test runner that a scheduler must still stop)."""
    import signal

    import click

    from actgen.shards.errors import Terminated, cli_errors

    seen = []

    @click.command()
    @click.argument("fail")
    def cmd(fail):
        with cli_errors("prog", verbose=False):
            seen.append(signal.getsignal(signal.SIGTERM))
            if fail == "yes":
                raise ValueError("bad")

    def own(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, own)
    try:
        for fail, code in (("no", 0), ("yes", 2)):
            assert CliRunner().invoke(cmd, [fail]).exit_code == code
            assert signal.getsignal(signal.SIGTERM) is own
        assert all(handler is not own for handler in seen)       # inside, SIGTERM raised Terminated
        with pytest.raises(Terminated):
            seen[0](signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("module", ["actgen.builder.cli", "actgen.trainer.cli", "actgen.fitting.cli",
                                    "actgen.demo.cli"])
def test_every_cli_takes_debug(module):
    import importlib

    main = importlib.import_module(module).main
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "--debug" in result.output


# -- one writer per folder ---------------------------------------------------------------------------


def _hold(lock_path: Path) -> subprocess.Popen:
    """Another live process holding ``lock_path``."""
    code = ("import sys, time\nfrom actgen.shards.locks import hold_lock\n"
            "with hold_lock(sys.argv[1], 'test'):\n    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_watcher_exits_naming_the_first_and_a_dead_ones_lock_is_taken_over(tmp_path):
    from actgen.builder.watch import watch_lock_path

    run_dir = tmp_path / "run"
    lock = watch_lock_path(run_dir)
    holder = _hold(lock)
    try:
        result = _invoke(build_main, "--config", SMOKE, "--watch", run_dir, "--poll", "0.05", "--idle-timeout", "0.1")
        _one_line(result, "actgen-build", 2, f"run directory {run_dir} (actgen-build --watch) is in use by "
                  f"pid {holder.pid} on host {socket.gethostname()}", str(lock))
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert lock.exists()                               # killed: its lock file stays, unlocked
    result = _invoke(build_main, "--config", SMOKE, "--watch", run_dir, "--poll", "0.05", "--idle-timeout", "0.1")
    _one_line(result, "actgen-build", 2, "no new round to build")   # it ran: the stale lock was taken over
    assert not lock.exists() and not run_dir.exists()  # released and removed; the run directory untouched


def test_a_build_of_a_folder_another_live_build_holds_exits_without_marking_the_round(build_round, tmp_path,
                                                                                      build_fast):
    from actgen.shards.locks import sibling_lock_path

    round_dir = _copy_round(build_round, tmp_path / "run" / "rounds" / "1")
    holder = _hold(sibling_lock_path(round_dir / "shards", "actgen-build"))
    try:
        args = ["--round-dir", round_dir, *[a for s in (*build_fast, "budget=4") for a in ("--set", s)]]
        _one_line(_invoke(build_main, *args), "actgen-build", 2, f"output folder {round_dir / 'shards'} is in use "
                  f"by pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert not (round_dir / "build_status.json").exists() and not (round_dir / "shards").exists()


def test_resume_keeps_the_temporaries_of_a_live_writer(build_round, tmp_path):
    from actgen.builder.outputs import _resume, clear_output
    from actgen.builder.plan import make_plan
    from actgen.shards.manifest import read_manifest

    manifest = read_manifest(build_round / "hard_samples.json")
    plan = make_plan(manifest.samples, 4, 0, 1, 2, mode="actgen", horizon=None, prefix="synth")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    try:
        for clean in (lambda: _resume(out, plan), lambda: clear_output(out)):
            mine = out / f".synth-000000.tar.partial-{live.pid}-0123abcd"
            stale = out / f".synth-000001.tar.partial-{dead.pid}-89abcdef"
            own = out / f".build.json.tmp-{os.getpid()}-00ff00ff"
            for p in (mine, stale, own):
                p.write_bytes(b"partial")
            clean()
            assert mine.exists() and not stale.exists() and not own.exists()
            mine.unlink()
    finally:
        live.kill()
        live.wait()


def test_a_symlink_planted_where_a_lock_goes_is_refused_not_followed(build_round, tmp_path, build_fast):
    from actgen.shards.locks import hold_lock, sibling_lock_path

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    round_dir = _copy_round(build_round, tmp_path / "run" / "rounds" / "1")
    lock = sibling_lock_path(round_dir / "shards", "actgen-build")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.symlink_to(victim)
    args = ["--round-dir", round_dir, *[a for s in (*build_fast, "budget=4") for a in ("--set", s)]]
    _one_line(_invoke(build_main, *args), "actgen-build", 2, f"lock file {lock} for output folder")
    assert victim.read_text() == "precious\n" and lock.is_symlink()      # nothing written through it
    assert not (round_dir / "shards").exists()
    # The same for any lock: a dangling link is not created through either.
    dangling = tmp_path / "dangling.lock"
    dangling.symlink_to(tmp_path / "nowhere" / "made.txt")
    with pytest.raises(OSError, match="is a symbolic link; refusing to follow it"):
        with hold_lock(dangling, "a test"):
            pass
    assert not (tmp_path / "nowhere").exists()


def test_a_hard_link_planted_where_a_lock_goes_is_refused_by_its_link_count(tmp_path):
    import os

    from actgen.shards.locks import hold_lock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock = tmp_path / "set.lock"
    os.link(victim, lock)                       # matters where fs.protected_hardlinks is 0
    with pytest.raises(OSError, match="has 2 links .*refusing to write it"):
        with hold_lock(lock, "a test"):
            pass
    assert victim.read_text() == "precious\n"


# ------------------------------------------------------------------ bounds checked before work
@pytest.mark.parametrize("override, key", [
    ("guidance.num_steps=100000", "guidance.num_steps"), ("budget=10000000", "budget"),
    ("batch_size=100000", "batch_size"), ("output.samples_per_shard=10000000", "output.samples_per_shard"),
    ("generator.tiny_image_size=65536", "generator.tiny_image_size"), ("guidance.bank_capacity=10000000",
                                                                     "guidance.bank_capacity"),
])
def test_a_value_that_would_make_a_build_unreasonable_is_refused_at_load_naming_its_key(build_config, override, key):
    with pytest.raises(ValueError, match=f"'{key}'.*at most|'{key}'.*an int in"):
        build_config(override)


def test_the_shipped_recipes_are_within_the_bounds():
    from actgen.builder.config import load_config as load_build
    from actgen.shards.config import packaged_configs

    for name in packaged_configs():
        if name.startswith("build"):
            load_build(f"configs/{name}.yaml", ["checkpoint=c", "manifest=m", "output.path=o"])


def test_steps_beyond_the_generators_training_steps_are_named_before_anything_loads(build_config, tmp_path):
    import json as _json

    from actgen.builder.inputs import check_steps

    (tmp_path / "gen" / "scheduler").mkdir(parents=True)
    (tmp_path / "gen" / "scheduler" / "scheduler_config.json").write_text(_json.dumps({"num_train_timesteps": 100}))
    check_steps(build_config(f"generator.path={tmp_path / 'gen'}", "guidance.num_steps=100"))
    with pytest.raises(ValueError, match=r"'guidance.num_steps' = 101: at most the 100 steps"):
        check_steps(build_config(f"generator.path={tmp_path / 'gen'}", "guidance.num_steps=101"))


def test_a_named_ray_cluster_that_is_not_there_fails_before_anything_is_written(build_config, tmp_path):
    cfg = build_config("ray.executor=ray", "ray.address=127.0.0.1:9", output=tmp_path / "out")
    from actgen.builder.pipeline import run as build

    with pytest.raises(ConnectionError, match=r"'ray.address' = '127.0.0.1:9': no Ray cluster answers"):
        build(cfg)
    assert not (tmp_path / "out").exists()


def test_a_file_size_limit_ray_cannot_start_under_is_named_before_ray_starts():
    import subprocess
    import sys

    # In a child process (a lowered limit cannot be raised again): the Ray executor is refused
    # at once, naming the limit, instead of Ray's startup timeout a minute later.
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, resource.RLIM_INFINITY))\n"
            "from actgen.shards.cluster import check_file_size_limit\n"
            "try:\n    check_file_size_limit()\nexcept OSError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "file-size limit (ulimit -f, RLIMIT_FSIZE) is 67,108,864 bytes" in out.stdout, out.stderr


@pytest.mark.parametrize("cause", ["No space left on device", "File too large"])
def test_a_write_failure_in_a_ray_worker_is_reported_as_the_workers_own_error_naming_the_file(cause):
    """A full disk (or a file-size limit Ray starts under) hits a shard write inside a worker:
    the driver reports the worker's own line, naming the shard, not Ray's wrapper."""
    import traceback

    from ray.exceptions import RayTaskError

    from actgen.builder.workers import unwrap_ray_error
    from actgen.shards.errors import WriteFailed

    try:
        raise WriteFailed(f"/data/out/synth-000003.tar: cannot write ({cause})")
    except WriteFailed as own:
        wrapped = RayTaskError("ShardWorker.write", traceback.format_exc(), own).as_instanceof_cause()
    reported = unwrap_ray_error(wrapped)
    assert isinstance(reported, WriteFailed)
    assert str(reported) == f"/data/out/synth-000003.tar: cannot write ({cause})"
