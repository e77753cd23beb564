"""The own-data recipe (configs/train-own.yaml + configs/build-own-sd.yaml, docs/own-data.md):
what it resolves to, and the whole loop on a small folder of photos with a tiny generator."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from actgen.trainer.cli import main as train_main
from actgen.trainer.config import load_config

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "train-own.yaml"
BUILD = REPO / "configs" / "build-own-sd.yaml"


def test_the_recipe_is_224_px_with_imagenet_statistics_a_pretrained_backbone_and_a_few_rounds():
    result = CliRunner().invoke(train_main, ["--config", str(RECIPE), "--print-config"])
    assert result.exit_code == 0, result.output
    cfg = load_config(RECIPE)
    assert cfg.input.image_size == 224 and cfg.input.crop == "random_resized"
    assert list(cfg.input.mean) == [0.485, 0.456, 0.406] and list(cfg.input.std) == [0.229, 0.224, 0.225]
    assert cfg.model.pretrained and not cfg.model.allow_download
    assert cfg.model.pretrained_file.endswith("resnet50.a1_in1k/model.safetensors")
    assert cfg.synthetic.source == "inline" and Path(cfg.synthetic.build_config).name == "build-own-sd.yaml"
    ends = [e for e in range(cfg.train.epochs) if (e + 1) % cfg.rounds.every == 0 and e < cfg.rounds.horizon]
    assert ends == [4, 9, 14]


def _photos(root: Path, classes=("red", "green", "blue"), per_class=12, side=64) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (side, side, 3), dtype=np.uint8)
            pixels[..., c] += 150               # the class is the dominant channel
            Image.fromarray(pixels).save(root / name / f"{i}.jpg", quality=90)
    return root


@pytest.mark.slow
def test_the_recipe_runs_end_to_end_on_a_folder_of_photos(tmp_path, torch_one_thread):
    photos = _photos(tmp_path / "photos")
    run_dir = tmp_path / "run"
    build = ['"generator.path=tiny"', '"ray.executor=local"', '"budget=6"', '"guidance.num_steps=3"',
             '"guidance.reference_steps=3"', '"guidance.guidance_steps=1"', '"batch_size=3"',
             '"output.samples_per_shard=3"', '"output.contact_sheet=0"']
    sets = [f"data.source.path={photos}", "model.name=test_resnet", "model.pretrained=false",
            "model.pretrained_file=null",
            "train.epochs=4", "train.amp=none", "train.channels_last=false", "train.device=cpu",
            "train.progress=false", "loader.num_workers=0", "loader.batch_size=16", "rounds.every=1",
            "rounds.horizon=2", "rounds.merge_epoch=2", f"synthetic.build_config={BUILD}",
            f"synthetic.build_overrides=[{','.join(build)}]"]
    args = ["--config", str(RECIPE), "--run-dir", str(run_dir)]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1] and summary["synthetic_pool"] == 12
    for r in (0, 1):
        index = json.loads((run_dir / "rounds" / str(r) / "shards" / "index.json").read_text())
        assert index["num_samples"] == 6
    # Stored at the recipe's 256 px as JPEG, which the trainer's 224-px crop reads.
    from actgen.shards.reader import ShardRandomAccess

    sample = ShardRandomAccess(run_dir / "rounds" / "0" / "shards").sample(0)
    assert sample.image.size == (256, 256)
