"""Trainer flags timm users reach for, each tested by what it does: gradient accumulation,
torch.compile, SyncBN, top-5."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from actgen.trainer.run import run

# A LayerNorm model (no batch statistics): micro-batches add up to the large batch exactly.
VIT = ("model.name=test_vit", "model.kwargs={img_size: 16}", "train.epochs=1", "rounds.enabled=false",
       "train.precise_bn_steps=0", "input.crop=none", "loader.drop_last=false", "loader.eval_batch_size=512")


def _weights(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "model.safetensors"))


def _max_diff(a, b) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
def test_micro_batches_add_up_to_the_large_batch_they_replace(tiny_train_config, torch_one_thread, tmp_path):
    big = run(tiny_train_config(*VIT, "loader.batch_size=16", run_dir=tmp_path / "big"))
    accum = run(tiny_train_config(*VIT, "loader.batch_size=8", "train.grad_accum_steps=2", run_dir=tmp_path / "acc"))
    small = run(tiny_train_config(*VIT, "loader.batch_size=8", run_dir=tmp_path / "small"))
    assert accum["optimizer_steps"] == big["optimizer_steps"] == small["optimizer_steps"] // 2 + small[
        "optimizer_steps"] % 2
    same = _max_diff(_weights(tmp_path / "big"), _weights(tmp_path / "acc"))
    other = _max_diff(_weights(tmp_path / "big"), _weights(tmp_path / "small"))
    # One step's gradients agree to float32 rounding (6e-8 of 0.6 measured); over the epoch's 57
    # steps the rounding grows to a few thousandths, two orders below the small batch's distance.
    assert same < 1e-2 and other > 50 * same, (same, other)


@pytest.mark.slow
def test_a_compiled_model_trains_as_the_eager_one(tiny_train_config, torch_one_thread, tmp_path):
    sets = ("train.epochs=1", "rounds.enabled=false", "loader.batch_size=64")
    eager = run(tiny_train_config(*sets, run_dir=tmp_path / "eager"))
    compiled = run(tiny_train_config(*sets, "train.compile=aot_eager", run_dir=tmp_path / "compiled"))
    assert compiled["final"]["test_acc"] == pytest.approx(eager["final"]["test_acc"], abs=0.02)
    assert _max_diff(_weights(tmp_path / "eager"), _weights(tmp_path / "compiled")) < 1e-3


def test_an_unknown_compile_backend_is_named_with_the_known_ones(tiny_train_config):
    from actgen.trainer.task import Task

    cfg = tiny_train_config("train.compile=no-such-backend")
    task = Task(torch.nn.Linear(2, 2), cfg.train, 2, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"'train.compile' = 'no-such-backend'.*aot_eager"):
        task.compile(cfg.train.compile)


def test_sync_bn_converts_every_batchnorm_of_a_multi_process_run_only():
    import timm

    from actgen.trainer.model import sync_batchnorm

    model = timm.create_model("test_resnet", num_classes=3)
    kinds = lambda m: {type(x).__name__ for x in m.modules() if "BatchNorm" in type(x).__name__}  # noqa: E731
    assert "SyncBatchNorm" not in kinds(sync_batchnorm(model, True, False, torch.device("cpu")))
    converted = sync_batchnorm(model, True, True, torch.device("cuda"))    # conversion only: no GPU needed
    assert kinds(converted) == {"SyncBatchNorm"}
    x = torch.randn(2, 3, 16, 16)
    model.eval(), converted.eval()
    assert torch.allclose(model(x), converted(x))          # same weights and statistics, same output
    with pytest.raises(ValueError, match="'train.sync_bn' = true: torch's SyncBatchNorm trains on GPUs only"):
        sync_batchnorm(model, True, True, torch.device("cpu"))


def test_top5_counts_a_label_among_the_five_highest_logits():
    from actgen.trainer.distributed import Runtime
    from actgen.trainer.evaluate import predict

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x[:, :, 0, 0]       # the logits are the images' first pixels

    logits = torch.tensor([[9., 8, 7, 6, 5, 4, 3],     # label 0: top-1
                           [9., 8, 7, 6, 5, 4, 3],     # label 4: 5th highest, in the top 5
                           [9., 8, 7, 6, 5, 4, 3]])    # label 5: 6th, outside
    labels = torch.tensor([0, 4, 5])
    images = logits[:, :, None, None].expand(-1, -1, 2, 2)
    loader = [(images, labels, torch.arange(3))]
    rt = Runtime(device=torch.device("cpu"))
    p = predict(Fixed(), loader, np.arange(3), rt)
    assert p.accuracy == pytest.approx(1 / 3) and p.top5_accuracy == pytest.approx(2 / 3)
    few = predict(Fixed(), [(images[:, :5], torch.tensor([0, 4, 1]), torch.arange(3))], np.arange(3), rt)
    assert np.isnan(few.top5_accuracy)                     # 5 classes: top-5 says nothing


# ------------------------------------------------------------------ local-dir: and hf-hub: names
@pytest.fixture(scope="module")
def trained_final(tmp_path_factory):
    """A finished tiny run's final/ (timm's config.json + model.safetensors)."""
    from actgen.trainer.config import load_config
    from conftest import TRAINER_TINY_OVERRIDES

    run_dir = tmp_path_factory.mktemp("src") / "run"
    torch.set_num_threads(1)
    run(load_config(None, [*TRAINER_TINY_OVERRIDES, f"run_dir={run_dir}", "train.epochs=1", "rounds.enabled=false"]))
    return run_dir / "final"


def _convs(model_or_state) -> dict[str, torch.Tensor]:
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    return {k: v for k, v in state.items() if k.endswith("conv1.weight") or k.endswith("fc.weight")}


def test_a_local_dir_model_starts_from_its_folder_and_bundles_name_the_architecture(trained_final, tmp_path):
    from actgen.trainer.config import ModelConfig
    from actgen.trainer.model import create_model, model_identity

    cfg = ModelConfig(name=f"local-dir:{trained_final}", pretrained=True)
    model = create_model(cfg, num_classes=10)
    expected = _convs(_weights(trained_final.parent))
    assert expected and all(torch.equal(_convs(model)[k], v) for k, v in expected.items())
    assert model_identity(cfg)[0] == "test_resnet"           # what a bundle records: no folder needed
    scratch = create_model(ModelConfig(name=f"local-dir:{trained_final}"), num_classes=10)
    assert not all(torch.equal(_convs(scratch)[k], v) for k, v in expected.items())
    with pytest.raises(FileNotFoundError, match="no config.json"):
        create_model(ModelConfig(name=f"local-dir:{tmp_path}"), num_classes=10)


def test_a_hub_model_name_is_read_from_the_local_cache_only_unless_downloads_are_allowed(trained_final, tmp_path,
                                                                                       monkeypatch):
    import shutil

    import huggingface_hub.constants

    from actgen.trainer.config import ModelConfig
    from actgen.trainer.model import create_model

    repo = tmp_path / "cache" / "models--acme--tiny-digits"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(trained_final / f, snapshot / f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    model = create_model(ModelConfig(name="hf-hub:acme/tiny-digits", pretrained=True), num_classes=10)
    expected = _convs(_weights(trained_final.parent))
    assert all(torch.equal(_convs(model)[k], v) for k, v in expected.items())
    with pytest.raises(ValueError, match=r"'model.name' = 'hf-hub:acme/not-cached'.*hf download acme/not-cached"):
        create_model(ModelConfig(name="hf-hub:acme/not-cached", pretrained=True), num_classes=10)


def test_a_folder_whose_config_points_timm_at_other_files_is_refused(trained_final, tmp_path):
    import json
    import shutil

    from actgen.shards.errors import FormatError
    from actgen.trainer.config import ModelConfig
    from actgen.trainer.model import create_model

    shutil.copytree(trained_final, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model_args"] = {"checkpoint_path": "/etc/passwd"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError, match=r"field 'model_args.checkpoint_path'.*not allowed"):
        create_model(ModelConfig(name=f"local-dir:{tmp_path / 'm'}", pretrained=True), num_classes=10)


def test_a_run_normalising_on_the_device_trains_as_one_normalising_in_the_workers(tiny_train_config, torch_one_thread,
                                                                                   tmp_path, monkeypatch):
    """loader.normalize=device: every batch (training and evaluation) reaches the model through the
    device's normalisation, and the run ends where the workers' run ends, up to float rounding."""
    from actgen.trainer import transforms

    seen = []
    normalize = transforms.DeviceBatches.normalize
    monkeypatch.setattr(transforms.DeviceBatches, "normalize",
                        lambda self, x: seen.append(x.dtype) or normalize(self, x))
    sets = ("train.epochs=2", "synthetic.source=none")
    workers = run(tiny_train_config(*sets, run_dir=tmp_path / "workers"))
    assert not seen
    device = run(tiny_train_config(*sets, "loader.normalize=device", run_dir=tmp_path / "device"))
    assert len(seen) > 2 * 14 and set(seen) == {torch.uint8}      # 2 epochs of 14 batches, and the evaluations
    assert device["final"]["loss"] == pytest.approx(workers["final"]["loss"], rel=1e-5)
    assert device["final"]["test_acc"] == pytest.approx(workers["final"]["test_acc"], abs=2e-3)
