"""synthetic.source: inline — the trainer runs one actgen-build server per run and sends it each round."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from actgen.shards.bundle import bundle_sha256
from actgen.shards.reader import ShardRandomAccess, read_index
from actgen.trainer.config import SyntheticConfig
from actgen.trainer.inline import request_line, resolve_command, server_argv
from actgen.trainer.run import run

REPO = Path(__file__).resolve().parents[1]


def test_the_server_and_its_requests_point_the_builder_at_the_round(tmp_path):
    cfg = SyntheticConfig(source="inline", build_config="configs/build-smoke.yaml",
                          build_overrides=["budget=8", "ray.executor=local"])
    argv = server_argv(cfg)
    assert Path(argv[0]).name == "actgen-build" and argv[1:4] == ["--serve", "--request-listing-seconds", "0"]
    assert argv[4:6] == ["--config", "configs/build-smoke.yaml"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert sets == ["budget=8", "ray.executor=local"]
    request = json.loads(request_line(tmp_path / "rounds" / "3", str(tmp_path / "out")))
    assert request == {"round_dir": str(tmp_path / "rounds" / "3"), "output": str(tmp_path / "out"), "dataset": None}


def test_a_missing_builder_command_is_named():
    with pytest.raises(FileNotFoundError, match="'no-such-actgen-build'"):
        resolve_command("no-such-actgen-build")
    assert Path(resolve_command("actgen-build")).parent == Path(sys.executable).parent


def test_inline_needs_a_local_pattern():
    with pytest.raises(ValueError, match="synthetic.pattern"):
        SyntheticConfig(source="inline", pattern="http://host/{round}")


@pytest.mark.slow
def test_one_command_runs_the_active_loop(tiny_train_config, torch_one_thread):
    cfg = tiny_train_config("synthetic.source=inline", f"synthetic.build_config={REPO}/configs/build-smoke.yaml",
                            "synthetic.build_overrides=[ray.executor=local,budget=8,output.min_shards=2]",
                            "synthetic.on_missing=error")
    summary = run(cfg)
    run_dir = cfg.resolved_run_dir()
    # Rounds 0 and 1 were each built by actgen-build and consumed by the next epoch.
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert summary["synthetic_pool"] == 16
    for r in (0, 1):
        built = run_dir / "rounds" / str(r) / "shards"
        index = read_index(built)
        assert index.num_samples == 8 and len(index.shards) == 2
        sample = ShardRandomAccess(built).sample(0)
        # Provenance ties every image to the round's checkpoint and a hard sample of its manifest.
        assert sample.provenance["checkpoint_sha256"] == bundle_sha256(run_dir / "rounds" / str(r) / "checkpoint")
        manifest = json.loads((run_dir / "rounds" / str(r) / "hard_samples.json").read_text())
        assert sample.provenance["source_id"] in {s["id"] for s in manifest["samples"]}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["synthetic_pool"] for row in rows] == [0, 8, 16, 16]
    # The builder's log is kept where --watch keeps it: per round, and for the run.
    for r in (0, 1):
        assert "wrote index" in (run_dir / "rounds" / str(r) / "build.log").read_text()
    assert (run_dir / "build.log").read_text().count("wrote index") >= 2
    assert all(row["synthetic_seen"] > 0 for row in rows[1:])
    # The model card names each round's synthetic data set, its generator and licences.
    card = (run_dir / "final" / "README.md").read_text()
    assert "Synthetic images of round `0`: `8` by generator `\"tiny\"`" in card and "Rounds of active generation: 2" in card


def test_the_builder_is_given_the_trainers_data_source(tmp_path):
    from actgen.builder.serve import parse_request, request_config
    from actgen.shards.sources import DataSource

    source = DataSource(path=str(tmp_path / "labeled.parquet"), class_names=["a", "b"])
    cfg = SyntheticConfig(source="inline", build_overrides=["budget=8"])
    argv = server_argv(cfg)
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    # The builder's side of the protocol: the server's own overrides, then the request's paths and
    # data set taken literally.
    round_dir, output, dataset = parse_request(request_line(tmp_path / "rounds" / "0", str(tmp_path / "out"), source))
    built = request_config(None, sets, round_dir, output, dataset)
    assert built.dataset == source                      # the builder reads exactly the trainer's data
    assert built.budget == 8 and Path(built.output.path) == tmp_path / "out"
    assert Path(built.manifest) == tmp_path / "rounds" / "0" / "hard_samples.json"


def test_a_bad_generator_in_the_build_overrides_fails_before_the_run_folder_exists(tiny_train_config, tmp_path):
    cfg = tiny_train_config("synthetic.source=inline", f"synthetic.build_config={REPO}/configs/build-smoke.yaml",
                            f"synthetic.build_overrides=[generator.path={tmp_path / 'no-generator'}]")
    with pytest.raises(ValueError, match=r"builder refuses them: .*no-generator.*neither a Stable Diffusion"):
        run(cfg)
    assert not cfg.resolved_run_dir().exists()
    cfg = tiny_train_config("synthetic.source=inline", "synthetic.build_overrides=[guidance.num_stepz=3]")
    with pytest.raises(ValueError, match="num_stepz"):
        run(cfg)
    assert not cfg.resolved_run_dir().exists()


def test_the_builders_check_passes_a_good_config():
    import subprocess

    out = subprocess.run([resolve_command("actgen-build"), "--check", "--config", str(REPO / "configs/build-smoke.yaml")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "config and generator ok" in out.stdout, out.stderr
