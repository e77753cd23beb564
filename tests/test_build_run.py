"""``run(cfg)`` end to end in this process (``ray.executor=local``): a verified data set with
provenance and a contact sheet, determinism, resuming, and refusing other settings."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from PIL import Image

from actgen.builder.contact_sheet import CONTACT_SHEET_FILE
from actgen.builder.outputs import BUILD_FILE
from actgen.builder.pipeline import run
from actgen.shards.errors import FormatError
from actgen.shards.manifest import read_manifest
from actgen.shards.reader import ShardRandomAccess, read_member, scan_tar
from actgen.shards.samples import REQUIRED_PROVENANCE
from actgen.shards.sources import DIGIT_NAMES
from actgen.shards.verify import verify
from actgen.shards.writer import INDEX_FILE, file_sha256

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _shas(directory) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(directory.glob("synth-*.tar"))}


def test_run_writes_a_verified_data_set_with_provenance(build_config, build_round, tiny_generator, tmp_path):
    cfg = build_config("output.resize=classifier", "schedule.enabled=true", "schedule.horizon=3", "budget=7")
    result = run(cfg)
    out = tmp_path / "shards"
    report = verify(out, class_names=list(DIGIT_NAMES))
    assert report.num_samples == 7 and report.num_shards == 4          # ceil(7 / 2 per shard)
    assert result.rendered == [f"synth-{i:06d}.tar" for i in range(4)] and result.kept == []
    assert result.index.image_size == (16, 16)                         # the classifier's input size
    assert result.index.created["round"] == 1

    manifest = read_manifest(build_round / "hard_samples.json")
    labels = {s.id: s.label for s in manifest.samples}
    sha = manifest.header.checkpoint_sha256
    data = ShardRandomAccess(out)
    modes = set()
    for i in range(len(data)):
        sample = data.sample(i)
        prov = sample.provenance
        assert set(REQUIRED_PROVENANCE) <= set(prov)
        assert sample.label == labels[prov["source_id"]] and prov["class_name"] == DIGIT_NAMES[sample.label]
        assert prov["generator"]["weights_sha256"] == tiny_generator.weights_hash()
        assert prov["checkpoint_sha256"] == sha and prov["round"] == 1
        assert prov["prompt"] == f"a photo of {prov['class_name']}"
        assert sample.key == f"r0001_{prov['source_id']}_i{prov['sample_index']:06d}_s{prov['seed']}"
        assert prov["guidance"]["settings"]["num_steps"] == 3 and prov["stored_size"] == [16, 16]
        modes.add(prov["guidance"]["mode"])
    assert "actgen" in modes                                           # round 1 of 3: a mix

    # The contact sheet beside the index, and the settings in build.json.
    with Image.open(out / CONTACT_SHEET_FILE) as sheet:
        assert sheet.format == "PNG" and sheet.width > 4 * 96
    settings = json.loads((out / BUILD_FILE).read_text())["settings"]
    assert settings["checkpoint_sha256"] == sha and settings["budget"] == 7
    assert not [p for p in out.iterdir() if p.name.startswith(".")]    # no temporaries left

    # A second run finds the finished build and leaves it alone.
    before = _shas(out)
    again = run(cfg)
    assert again.rendered == [] and again.index == result.index and _shas(out) == before


def test_resume_renders_only_what_is_missing_and_the_same_images(build_config, tmp_path):
    cfg = build_config()
    run(cfg)
    out = tmp_path / "shards"
    first = _shas(out)
    assert len(first) == 3
    # A crash: no index, one shard never written, one cut short, a writer's temporary left behind.
    (out / INDEX_FILE).unlink()
    (out / "synth-000001.tar").unlink()
    data = (out / "synth-000002.tar").read_bytes()
    (out / "synth-000002.tar").write_bytes(data[: len(data) // 3])
    stray = out / ".synth-000001.tar.partial-123-deadbeef"
    stray.write_bytes(b"half a tar")
    with pytest.raises(FormatError, match="no finished data set"):
        verify(out)

    result = run(cfg)
    assert result.kept == ["synth-000000.tar"]
    assert sorted(result.rendered) == ["synth-000001.tar", "synth-000002.tar"]
    assert not stray.exists()
    assert _shas(out) == first                       # same seed and settings: the same bytes
    assert verify(out).num_samples == 6


def test_other_settings_are_refused_unless_overwrite(build_config, tmp_path):
    run(build_config())
    out = tmp_path / "shards"
    with pytest.raises(FileExistsError, match=r"finished build with other settings \(differs in: guidance.margin\)"):
        run(build_config("guidance.margin=200"))
    assert verify(out).num_samples == 6              # untouched
    result = run(build_config("guidance.margin=200", "output.overwrite=true"))
    assert len(result.rendered) == 3
    assert json.loads((out / BUILD_FILE).read_text())["settings"]["guidance"]["margin"] == 200.0
    # The worker count, batch size and executor are not settings: a rerun with others is a no-op.
    assert run(build_config("guidance.margin=200", "batch_size=1", "ray.workers=3")).rendered == []

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no actgen-build output"):
        run(build_config(output=foreign))
    assert os.listdir(foreign) == ["notes.txt"]


def test_resume_refuses_a_generator_whose_weights_changed_in_place(build_config, tmp_path):
    from actgen.builder.tiny import build_tiny_generator

    sd = tmp_path / "sd"
    build_tiny_generator(seed=0).save_pretrained(sd)
    cfg = build_config(f"generator.path={sd}", "generator.attention_resolution=8")   # tiny: latent / 2
    run(cfg)
    out = tmp_path / "shards"
    (out / INDEX_FILE).unlink()
    (out / "synth-000002.tar").unlink()
    shutil.rmtree(sd)
    build_tiny_generator(seed=1).save_pretrained(sd)        # same path and settings, other weights
    with pytest.raises(ValueError, match="but the shards already in .* were rendered by"):
        run(cfg)
    assert not (out / "synth-000002.tar").exists() and not (out / INDEX_FILE).exists()


def test_a_null_horizon_takes_the_manifests_round_count(build_config, build_round, tmp_path):
    import dataclasses
    import json

    from actgen.shards.manifest import write_manifest

    # A manifest without header.num_rounds (the fixture's) cannot feed the §1.3 schedules.
    with pytest.raises(ValueError, match=r"'schedule.horizon' is null .* no 'header.num_rounds'"):
        run(build_config("schedule.enabled=true", output=tmp_path / "none"))
    assert not (tmp_path / "none").exists()
    # With it, the build is the one an explicit horizon gives: same plan, horizon recorded.
    manifest = read_manifest(build_round / "hard_samples.json")
    counted = tmp_path / "hard_samples.json"
    write_manifest(counted, dataclasses.replace(manifest, header=dataclasses.replace(manifest.header, num_rounds=3)))
    implicit = run(build_config("schedule.enabled=true", "budget=8", f"manifest={counted}", output=tmp_path / "a"))
    explicit = run(build_config("schedule.enabled=true", "schedule.horizon=3", "budget=8", output=tmp_path / "b"))
    settings = [json.loads((r.output / "build.json").read_text())["settings"] for r in (implicit, explicit)]
    assert settings[0]["schedule"]["horizon"] == 3
    assert settings[0]["plan_sha256"] == settings[1]["plan_sha256"]
    assert _shas(implicit.output) == _shas(explicit.output)


def test_uniform_targets_render_every_class_without_guides(build_config, tmp_path):
    result = run(build_config("mode=txt2img", "targets=uniform", "budget=10"))
    assert verify(result.output).num_samples == 10
    labels = []
    for shard in result.index.shards:
        with open(result.output / shard.filename, "rb") as f:
            for key, spans in scan_tar(f, shard.filename):
                provenance = json.loads(read_member(f, spans["json"]))
                assert provenance["source_id"] == "" and provenance["guidance"]["mode"] == "txt2img"
                labels.append(provenance["label"])
    assert sorted(labels) == list(range(10))          # 10 images over the 10 digits: one each


def test_balanced_allocation_with_training_guides_end_to_end(build_round, build_config, tmp_path):
    """A manifest with a guide pool, built ``balanced`` with ``fill: train``: every class gets its
    share, the hard samples render once each, the rest is guided by pool images of the class; the
    spread is recorded in build.json, the index and each image's provenance, and ``actgen-data
    info`` reports it."""
    import dataclasses

    from click.testing import CliRunner

    from actgen.shards.manifest import write_manifest
    from actgen.shards.sources import DataSource, load_source
    from actgen.sharing.cli import main as data_cli

    digits = load_source(DataSource())
    manifest = read_manifest(build_round / "hard_samples.json")
    hard_ids = {s.id for s in manifest.samples}
    pool = [digits.sample_id(i) for i in range(1000, 1040) if digits.sample_id(i) not in hard_ids]
    round_dir = tmp_path / "round"
    shutil.copytree(build_round, round_dir)
    write_manifest(round_dir / "hard_samples.json", dataclasses.replace(
        manifest, header=dataclasses.replace(manifest.header, guide_pool=pool)))
    cfg = build_config("budget=20", "allocation.policy=balanced", "allocation.fill=train", "mode=img2img",
                       f"manifest={round_dir / 'hard_samples.json'}")
    result = run(cfg)
    out = tmp_path / "shards"
    data = ShardRandomAccess(out)
    provs = [data.provenance(i) for i in range(len(data))]
    assert sorted(data.labels()) == sorted(list(range(10)) * 2)              # 2 per class
    hard = [p for p in provs if p["role"] == "hard"]
    assert sorted(p["source_id"] for p in hard) == sorted(hard_ids)          # every hard sample, once
    fills = [p for p in provs if p["role"] == "fill"]
    assert len(fills) == 15 and all(p["source_id"] in pool for p in fills)
    assert all(digits.label(digits.index_of(p["source_id"])) == DIGIT_NAMES.index(p["class_name"]) for p in fills)
    stats = result.index.created["allocation"]
    assert stats["per_class"] == {name: 2 for name in DIGIT_NAMES}
    assert stats["roles"] == {"hard": 5, "fill": 15} and stats["renders_per_guide_max"] == 1
    assert json.loads((out / BUILD_FILE).read_text())["settings"]["allocation"] == stats
    info = CliRunner().invoke(data_cli, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert "20 distinct, renders per guide max 1, mean 1; roles fill 15, hard 5" in info.output


@pytest.mark.parametrize("policy", ["balanced", "mixed"])
def test_guided_and_unguided_images_render_in_one_batch(build_config, tmp_path, policy):
    """A batch mixing guided renders with images that have no guide (a balanced fill without a
    pool, a mixed policy's random share) renders and verifies."""
    cfg = build_config("budget=20", f"allocation.policy={policy}", "mode=actgen", "batch_size=10",
                       "output.samples_per_shard=10")
    result = run(cfg)
    data = ShardRandomAccess(tmp_path / "shards")
    provs = [data.provenance(i) for i in range(len(data))]
    unguided = [p for p in provs if not p["source_id"]]
    assert unguided and all(p["guidance"]["mode"] == "txt2img" for p in unguided)
    assert any(p["guidance"]["mode"] == "actgen" for p in provs)
    assert result.index.num_samples == 20 and verify(tmp_path / "shards").num_samples == 20
