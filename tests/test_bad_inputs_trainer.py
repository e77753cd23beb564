"""actgen-train against hostile input: stale shards, tampered pool copies, 16-bit, null, corrupt and
oversized images, failed writes, and run directories left by a trainer that died early.

Each case was a traceback, a silent wrong result or a run directory only ``rm -rf`` cleared; each
is now one line naming the file (exit 2 for bad input, 1 for a runtime failure), or works.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from actgen.shards.errors import FormatError
from actgen.shards.sources import DIGIT_NAMES, DataSource, load_source

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# --------------------------------------------------------------------------------------- helpers
def _cli(*args: str):
    from actgen.trainer.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _one_line(result, status: int, *fragments: str) -> str:
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("actgen-train: error: " if status == 2 else "actgen-train: failed: "), last
    for fragment in fragments:
        assert fragment in last, last
    return last


def _config_file(cfg, path: Path) -> Path:
    from actgen.trainer.config import config_to_yaml

    path.write_text(config_to_yaml(cfg))
    return path


def _png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` 8-bit gray pixels (what a decompression bomb shows first)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


_DIGITS = None


def _digits():
    global _DIGITS
    if _DIGITS is None:
        _DIGITS = load_source(DataSource())
    return _DIGITS


def _digits_parquet(path: Path, n: int = 200, images: dict | None = None) -> Path:
    """The first ``n`` digits as a parquet file (PNG bytes, ClassLabel); ``images`` replaces rows'
    encoded bytes (None: a null image)."""
    from datasets import ClassLabel, Dataset, Features, Image

    digits = _digits()
    raw = digits.dataset.select_columns(["image"]).cast_column("image", Image(decode=False))
    values = [{"bytes": raw[i]["image"]["bytes"], "path": None} for i in range(n)]
    for row, data in (images or {}).items():
        values[row] = None if data is None else {"bytes": data, "path": None}
    Dataset.from_dict({"image": values, "label": [digits.label(i) for i in range(n)]},
                      features=Features({"image": Image(), "label": ClassLabel(names=list(DIGIT_NAMES))})
                      ).to_parquet(str(path))
    return path


def _truncated_png(row: int) -> bytes:
    """Digit ``row``'s PNG cut after 40 bytes (the header reads, the pixels do not)."""
    from datasets import Image

    raw = _digits().dataset.select_columns(["image"]).cast_column("image", Image(decode=False))
    return raw[row]["image"]["bytes"][:40]


def _record_manifest_sha(directory: Path, sha: str) -> None:
    """Stamp a finished data set's index with the manifest it was built from (as actgen-build does)."""
    from actgen.shards.reader import read_index
    from actgen.shards.writer import write_index

    index = read_index(directory)
    write_index(directory, dataclasses.replace(index, created={**index.created, "manifest_sha256": sha}))


# ------------------------------------------------------------- 2. shards built from an old manifest
@pytest.mark.slow
def test_shards_built_from_an_older_manifest_are_not_joined(tiny_train_config, write_digit_shards):
    """Round 0's manifest changed after its shards were built (an edit, a redone epoch): before,
    the trainer joined the stale shards; now they count as not built, naming both hashes."""
    from actgen.shards.manifest import read_manifest, write_manifest
    from actgen.shards.writer import file_sha256
    from actgen.trainer.run import run

    cfg = tiny_train_config("train.epochs=2", "rounds.horizon=1", "rounds.merge_epoch=2")
    run_dir = cfg.resolved_run_dir()
    run(cfg, stop_after=1)
    manifest = run_dir / "rounds" / "0" / "hard_samples.json"
    old_sha = file_sha256(manifest)
    write_digit_shards(run_dir / "rounds" / "0" / "shards", n=12, round=0)
    _record_manifest_sha(run_dir / "rounds" / "0" / "shards", old_sha)
    edited = read_manifest(manifest)
    write_manifest(manifest, dataclasses.replace(edited, samples=edited.samples[:-1]))
    new_sha = file_sha256(manifest)
    assert new_sha != old_sha

    strict = dataclasses.replace(cfg, synthetic=dataclasses.replace(cfg.synthetic, on_missing="error"))
    with pytest.raises(ValueError, match=f"was built from another manifest.*{old_sha}.*{new_sha}"):
        run(strict, resume=True)
    # Rebuilt from the manifest now in the folder: joined.
    _record_manifest_sha(run_dir / "rounds" / "0" / "shards", new_sha)
    summary = run(strict, resume=True)
    assert summary["complete"] and summary["synthetic_pool"] == 12


def test_a_stale_round_is_waited_for_and_skipped_like_an_unfinished_one(tmp_path, write_digit_shards, caplog):
    from actgen.shards.writer import file_sha256
    from actgen.trainer.config import SyntheticConfig
    from actgen.trainer.synthetic import round_manifest, wait_until_finished

    folder = tmp_path / "rounds" / "0"
    shards = write_digit_shards(folder / "shards", n=4)
    (folder / "hard_samples.json").write_text("{}")  # the round's manifest (only its bytes count here)
    _record_manifest_sha(shards, "0" * 64)
    manifest = round_manifest(str(shards))
    assert manifest == folder / "hard_samples.json"
    with caplog.at_level(logging.WARNING, logger="actgen.trainer.synthetic"):
        assert not wait_until_finished(str(shards), SyntheticConfig(on_missing="skip"), 0, manifest=manifest)
    assert "0" * 64 in caplog.text and file_sha256(manifest) in caplog.text
    ticks = iter(range(100))
    with pytest.raises(TimeoutError, match="built from another manifest"):
        wait_until_finished(str(shards), SyntheticConfig(on_missing="wait", timeout_s=3, poll_s=1), 0,
                            sleep=lambda s: None, clock=lambda: next(ticks), manifest=manifest)


# ----------------------------------------------------------------- 3. resume re-verifies the pool
@pytest.mark.slow
def test_resume_rechecks_the_pool_copies(tiny_train_config, write_digit_shards, tmp_path):
    """Before, only the copy's index.json was read on resume: relabelled shards were trained on."""
    from actgen.trainer.run import run

    write_digit_shards(tmp_path / "builder" / "r0", n=10, round=0)
    cfg = tiny_train_config(f"synthetic.pattern={tmp_path}/builder/r{{round}}", "train.epochs=3",
                            "rounds.horizon=1", "rounds.merge_epoch=3")
    run_dir = cfg.resolved_run_dir()
    assert run(cfg, stop_after=2)["synthetic_pool"] == 10
    copy = run_dir / "synthetic" / "round-0000"
    backup = tmp_path / "backup"
    shutil.copytree(copy, backup)

    # 1. Bytes changed in place (same size): a label member rewritten.
    shard = sorted(copy.glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    at = data.index(b".cls") + 512  # that member's data block
    data[at] = ord("9") if data[at] != ord("9") else ord("8")
    shard.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=f"{shard.name}: pool shard changed since the run trained on it: sha256"):
        run(cfg, resume=True)
    # 2. A consistent replacement (other shards and a matching index): the index itself changed.
    shutil.rmtree(copy)
    write_digit_shards(copy, n=10, round=0, seed=7)
    with pytest.raises(FormatError, match="index.json: changed since the run trained on it"):
        run(cfg, resume=True)
    # 3. The copy it trained on: resumes.
    shutil.rmtree(copy)
    shutil.copytree(backup, copy)
    assert run(cfg, resume=True)["complete"]


def test_pool_check_hashes_only_shards_whose_stat_changed(tmp_path, write_digit_shards, monkeypatch):
    import actgen.trainer.synthetic as synthetic
    from actgen.trainer.synthetic import acquire, check_pool_copy

    source = write_digit_shards(tmp_path / "b", n=8, num_shards=4)
    entry = acquire(str(source), tmp_path / "run", round=0, epoch=1, class_names=list(DIGIT_NAMES))
    hashed = []
    real = synthetic.file_sha256
    monkeypatch.setattr(synthetic, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    entry = check_pool_copy(tmp_path / "run", entry)
    assert [h for h in hashed if h.endswith(".tar")] == []  # nothing touched since the copy was verified
    shard = sorted((tmp_path / "run" / entry.directory).glob("*.tar"))[2]
    before = shard.stat()
    data = bytearray(shard.read_bytes())
    data[600] ^= 1
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime put back; ctime cannot be
    with pytest.raises(FormatError, match=shard.name):
        check_pool_copy(tmp_path / "run", entry)
    assert [h for h in hashed if h.endswith(".tar")] == [shard.name]


# ------------------------------------------------------------------------ 7. 16-bit and other modes
def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    """Before, convert("RGB") clipped I;16 to 0/255: every value above 255 became white."""
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    from actgen.shards.samples import decode_image

    wide = np.array([[0, 257, 1000, 40000], [65535, 32768, 12850, 514]], dtype=np.uint16)
    expected = np.rint(wide / 257.0).astype(np.uint8)
    encoded = _png(wide)
    assert PILImage.open(io.BytesIO(encoded)).mode == "I;16"
    # A data set's images and a shard's images go through the same decode.
    path = tmp_path / "wide.parquet"
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    Dataset.from_dict({"image": [{"bytes": encoded, "path": None}] * 2, "label": [0, 1]},
                      features=features).to_parquet(str(path))
    images = load_source(DataSource(path=str(path)))
    for image in (images.image(0), decode_image(encoded, "s.tar", "k", "png")):
        pixels = np.asarray(image)
        assert image.mode == "RGB" and pixels.shape == (2, 4, 3)
        assert np.array_equal(pixels[..., 0], expected) and np.array_equal(pixels[..., 2], expected)


def test_32_bit_and_float_images_follow_the_decode_policy():
    from PIL import Image

    from actgen.shards.samples import decode_image_bytes

    def tiff(array, mode):
        buf = io.BytesIO()
        Image.fromarray(array, mode=mode).save(buf, format="TIFF")
        return buf.getvalue()

    as_16 = tiff(np.array([[0, 65535, 25700]], dtype=np.int32), "I")
    assert np.asarray(decode_image_bytes(as_16, "x.tif", "sample 1"))[0, :, 0].tolist() == [0, 255, 100]
    unit = tiff(np.array([[0.0, 1.0, 0.5]], dtype=np.float32), "F")
    assert np.asarray(decode_image_bytes(unit, "x.tif", "sample 2"))[0, :, 0].tolist() == [0, 255, 128]
    with pytest.raises(FormatError, match=r"x.tif: sample 3: 32-bit .*outside 0..65535 \(-5..70000\)"):
        decode_image_bytes(tiff(np.array([[-5, 70000]], dtype=np.int32), "I"), "x.tif", "sample 3")
    with pytest.raises(FormatError, match=r"sample 4: float .*outside \[0, 1\]"):
        decode_image_bytes(tiff(np.array([[0.0, 3.5]], dtype=np.float32), "F"), "x.tif", "sample 4")


# ------------------------------------------------- data-set images: null, corrupt, too large
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("bad, fragments", [
    (None, ["the image is missing (null)"]),
    ("truncated", ["image does not decode"]),
    (_png_header(20000, 20000), ["too large to decode", "400000000 pixels", "decompression-bomb guard"]),
    (_png_header(10000, 10000), ["too large to decode", "10000x10000"]),  # Pillow itself only warns here
], ids=["null", "truncated", "bomb", "half-bomb"])
def test_a_bad_image_in_a_small_data_set_is_found_before_the_run_directory(tmp_path, tiny_train_config, bad,
                                                                         fragments):
    """Before: AttributeError (null), or a failure mid-epoch after the run directory existed."""
    data = _truncated_png(7) if bad == "truncated" else bad
    path = _digits_parquet(tmp_path / "digits.parquet", images={7: data})
    cfg = tiny_train_config(f"data.source.path={path}")
    fingerprint = load_source(DataSource(path=str(path))).fingerprint  # a null row hashes, too
    result = _cli("--config", _config_file(cfg, tmp_path / "train.yaml"))
    _one_line(result, 2, "digits.parquet", f"sample {fingerprint[:12]}-00000007 (row 7", *fragments)
    assert not cfg.resolved_run_dir().exists()


@pytest.mark.slow
def test_a_bad_image_in_a_large_data_set_stops_the_run_which_then_restarts(tmp_path, tiny_train_config):
    """Too large to scan first (decode_check_limit), the image fails mid-epoch: one line naming the
    sample, from a loader worker too; once it is fixed, both a rerun and --resume go on."""
    bad = {row: _truncated_png(row) for row in range(5)}
    path = _digits_parquet(tmp_path / "digits.parquet", images=bad)
    cfg = tiny_train_config(f"data.source.path={path}", "data.decode_check_limit=0", "loader.num_workers=1",
                            "train.epochs=1", "rounds.horizon=1", "rounds.merge_epoch=1")
    config = _config_file(cfg, tmp_path / "train.yaml")
    run_dir = cfg.resolved_run_dir()
    _one_line(_cli("--config", config), 2, "digits.parquet", "image does not decode", "(row ")
    assert run_dir.is_dir() and not (run_dir / "last.pt").exists()
    _digits_parquet(path)  # fixed
    assert _cli("--run-dir", run_dir, "--resume").exit_code == 0
    assert json.loads((run_dir / "summary.json").read_text())["complete"]

    # The same from a plain rerun of the command.
    _digits_parquet(path, images=bad)
    shutil.rmtree(run_dir)
    _one_line(_cli("--config", config), 2, "image does not decode")
    _digits_parquet(path)
    result = _cli("--config", config)
    assert result.exit_code == 0, result.output
    assert "starting it over" in result.stderr


def test_resume_takes_fixed_images_after_a_checkpoint(tmp_path, tiny_train_config):
    """A bad image first read after the first checkpoint (dropped by drop_last in epoch 0): fixing
    it changes the data-set fingerprint, which resume refused; now it takes the fix, and only that."""
    from actgen.trainer.data import MixedBatchSampler
    from actgen.trainer.samples import SampleError
    from actgen.trainer.run import run

    n = 200
    cfg = tiny_train_config("data.test_fraction=0.0", "data.holdout_fraction=0.0", "rounds.enabled=false",
                            "synthetic.source=none", "train.epochs=2", "data.decode_check_limit=0")
    sampler = MixedBatchSampler(n, 0, cfg.loader.batch_size, "uniform", seed=cfg.train.seed, drop_last=True)
    used = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        used.append({i for batch in sampler for i, _ in batch})
    row = min(set(range(n)) - used[0] & used[1])  # the train split is every row, in order
    path = _digits_parquet(tmp_path / "digits.parquet", n=n, images={row: _truncated_png(row)})
    # precise_bn_steps=0: recomputing BN statistics would read the first training images before
    # epoch 0's evaluation, the bad one among them; the case here is an image first read later.
    cfg = tiny_train_config("data.test_fraction=0.0", "data.holdout_fraction=0.0", "rounds.enabled=false",
                            "synthetic.source=none", "train.epochs=2", "data.decode_check_limit=0",
                            "train.precise_bn_steps=0", f"data.source.path={path}")
    run_dir = cfg.resolved_run_dir()
    with pytest.raises(SampleError, match=f"row {row}"):
        run(cfg)
    assert (run_dir / "last.pt").is_file() and (run_dir / "data_errors.json").is_file()

    _digits_parquet(path, n=n)  # fixed: another fingerprint
    (run_dir / "data_errors.json").rename(tmp_path / "kept.json")
    with pytest.raises(FormatError, match="checkpoint was trained on data set .*only as a fix of the image"):
        run(cfg, resume=True)  # without the record, a changed data set is still refused
    (tmp_path / "kept.json").rename(run_dir / "data_errors.json")
    assert run(cfg, resume=True)["complete"]


# ----------------------------------------------------------------- a decompression bomb in a shard
class _RawImage:
    """Stands in for a PIL image in ShardSetWriter: ``save`` writes these bytes as they are."""

    def __init__(self, data: bytes, height: int, width: int):
        self.data, self.height, self.width = data, height, width

    def save(self, fp, format=None, **options):
        fp.write(self.data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("width", [20000, 10000])
def test_a_decompression_bomb_in_a_shard_names_the_sample_and_leaves_no_copy(tmp_path, make_synthetic_samples,
                                                                             width):
    """Before: DecompressionBombError (a traceback), and the unverified copy stayed in synthetic/."""
    from actgen.shards.samples import SyntheticSample
    from actgen.shards.writer import ShardSetWriter
    from actgen.trainer.synthetic import acquire

    samples = make_synthetic_samples(4)
    bomb = samples[2]
    samples[2] = SyntheticSample(key=bomb.key, label=bomb.label, provenance=bomb.provenance,
                                 image=_RawImage(_png_header(width, width), 12, 16))
    with ShardSetWriter(tmp_path / "b", ["cat", "dog", "bird"], total=4, num_shards=2) as writer:
        for sample in samples:
            writer.write(sample)
    run_dir = tmp_path / "run"
    with pytest.raises(FormatError, match=f"sample {bomb.key!r}: 'png' image is too large to decode .*{width**2}"):
        acquire(str(tmp_path / "b"), run_dir, round=0, epoch=1, class_names=["cat", "dog", "bird"])
    assert os.listdir(run_dir / "synthetic") == []


# ---------------------------------------------------------------------------- failed writes
def test_a_failed_bundle_write_is_one_line_naming_the_file(tmp_path, tiny_train_config, monkeypatch):
    """Before: a SafetensorError traceback (file too large, disk full)."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 27, kind: FileTooLarge, '
                              'message: "File too large" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    cfg = tiny_train_config("train.epochs=1", "rounds.horizon=1", "rounds.merge_epoch=1")
    run_dir = cfg.resolved_run_dir()
    result = _cli("--config", _config_file(cfg, tmp_path / "train.yaml"))
    _one_line(result, 1, f"{run_dir}/rounds/0/checkpoint/model.safetensors: cannot write", "File too large")
    assert sorted(os.listdir(run_dir / "rounds" / "0")) == []  # no half-written bundle, no manifest


@pytest.mark.slow
def test_a_file_size_limit_fails_the_trainer_with_one_line(tmp_path, tiny_train_config):
    """The real thing: RLIMIT_FSIZE below the bundle's size, in a subprocess."""
    import resource

    cfg = tiny_train_config("train.epochs=1", "rounds.horizon=1", "rounds.merge_epoch=1")
    config = _config_file(cfg, tmp_path / "train.yaml")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, resource.RLIM_INFINITY))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([str(Path(sys.executable).parent / "actgen-train"), "--config", str(config)],
                         capture_output=True, text=True, env=env, timeout=300, preexec_fn=limit)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("actgen-train: failed: ") and "model.safetensors: cannot write" in last, last


# ----------------------------------------------------------------- a trainer that died in epoch 0
def test_a_run_killed_before_its_first_checkpoint_can_be_restarted(tiny_train_config, monkeypatch, caplog):
    """Before: 'run directory exists' for a rerun and 'no checkpoint' for --resume; only rm -rf helped."""
    from actgen.trainer.loop import EpochLoop
    from actgen.trainer.run import run

    cfg = tiny_train_config("train.epochs=1", "rounds.horizon=1", "rounds.merge_epoch=1")
    run_dir = cfg.resolved_run_dir()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    for resume in (False, True):
        with monkeypatch.context() as m:
            m.setattr(EpochLoop, "train_epoch", killed)
            with pytest.raises(KeyboardInterrupt):
                run(cfg)
        assert (run_dir / "config.yaml").is_file() and not (run_dir / "last.pt").exists()
        (run_dir / "notes.txt").write_text("a user's file")
        # Corrected settings take the folder over (the changed keys logged), no manual deletion.
        other = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=0.5))
        with caplog.at_level(logging.WARNING, logger="actgen.trainer.rundir"):
            assert run(other, resume=resume)["complete"]
        assert "starting it over with other settings for ['optim.lr']" in caplog.text
        assert "lr: 0.5" in (run_dir / "config.yaml").read_text()
        assert (run_dir / "notes.txt").read_text() == "a user's file"      # only the run's own files go
        # A run with a checkpoint is only ever continued.
        with pytest.raises(ValueError, match="holds a checkpoint.*--resume"):
            run(cfg)
        shutil.rmtree(run_dir)


def test_an_optional_package_the_config_needs_is_named_before_the_run_folder_exists(tiny_train_config,
                                                                                    monkeypatch):
    import importlib.util

    from actgen.trainer.run import run

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "gcsfs") else real(name, *a))
    for overrides, key, extra in ((["train.tensorboard=true"], "train.tensorboard", "tensorboard"),
                                  (["synthetic.static=[gs://bucket/set]"], "synthetic.static[0]", "gcs"),
                                  (["synthetic.source=shards", "synthetic.pattern=gs://b/r{round}"],
                                   "synthetic.pattern", "gcs")):
        cfg = tiny_train_config(*overrides)
        with pytest.raises(ValueError, match=rf"'{re.escape(key)}'.*pip install 'actgen\[{extra}\]'"):
            run(cfg)
        assert not cfg.resolved_run_dir().exists()
