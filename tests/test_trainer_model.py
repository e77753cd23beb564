"""Model creation and initial weights: unknown names, mismatching checkpoints, head skipping."""
from __future__ import annotations

import pytest
import torch

from actgen.shards.bundle import BundleConfig, write_bundle
from actgen.shards.errors import FormatError
from actgen.trainer.config import ModelConfig
from actgen.trainer.model import create_model, export_state_dict

NAMES = ["a", "b", "c"]


def _bundle(directory, model, names):
    config = BundleConfig(architecture="test_resnet", num_classes=len(names), class_names=names,
                          input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear",
                          dataset_fingerprint="f" * 64, round=0, epoch=0)
    write_bundle(directory, export_state_dict(model), config)
    return directory


def test_unknown_model_is_one_clear_error():
    with pytest.raises(ValueError, match="config key 'model.name' = 'resnet_nope': not a timm model"):
        create_model(ModelConfig(name="resnet_nope"), 3)


def test_bad_kwargs_name_the_key():
    with pytest.raises(ValueError, match="config key 'model.kwargs'"):
        create_model(ModelConfig(name="test_resnet", kwargs={"no_such_arg": 1}), 3)


def test_initial_weights_from_a_bundle_state_dict_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = create_model(ModelConfig(name="test_resnet"), 3)
    bundle = _bundle(tmp_path / "bundle", source, NAMES)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pth")
    save_file(export_state_dict(source), str(tmp_path / "w.safetensors"))
    for path in (bundle, tmp_path / "w.pth", tmp_path / "w.safetensors"):
        torch.manual_seed(1)
        model = create_model(ModelConfig(name="test_resnet", initial_weights=str(path)), 3, NAMES)
        for key, value in source.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), (path, key)


def test_a_checkpoint_from_another_data_set_is_rejected(tmp_path):
    source = create_model(ModelConfig(name="test_resnet"), 3)
    bundle = _bundle(tmp_path / "bundle", source, ["x", "y", "z"])
    with pytest.raises(FormatError, match=r"bundle: checkpoint was trained on classes \['x', 'y', 'z'\], this "
                                          r"data set has \['a', 'b', 'c'\]"):
        create_model(ModelConfig(name="test_resnet", initial_weights=str(bundle)), 3, NAMES)
    # A plain state dict with another number of classes: the head's shape gives it away.
    torch.save(create_model(ModelConfig(name="test_resnet"), 5).state_dict(), tmp_path / "five.pt")
    with pytest.raises(FormatError, match=r"five.pt: classifier head 'fc.weight' has shape \(5, "):
        create_model(ModelConfig(name="test_resnet", initial_weights=str(tmp_path / "five.pt")), 3, NAMES)


def test_skip_head_fine_tunes_to_new_classes(tmp_path):
    torch.manual_seed(0)
    source = create_model(ModelConfig(name="test_resnet"), 5)
    torch.save(source.state_dict(), tmp_path / "five.pt")
    model = create_model(ModelConfig(name="test_resnet", initial_weights=str(tmp_path / "five.pt"),
                                     skip_head=True), 3, NAMES)
    assert torch.equal(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert model.state_dict()["fc.weight"].shape == (3, source.state_dict()["fc.weight"].shape[1])


def test_missing_unreadable_and_foreign_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt: initial weights not found"):
        create_model(ModelConfig(name="test_resnet", initial_weights=str(tmp_path / "absent.pt")), 3)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FormatError, match="junk.pt: not a readable weights file"):
        create_model(ModelConfig(name="test_resnet", initial_weights=str(tmp_path / "junk.pt")), 3)
    torch.save(create_model(ModelConfig(name="test_convnext"), 3).state_dict(), tmp_path / "convnext.pt")
    with pytest.raises(FormatError, match="convnext.pt: .*(does not fit|shape)"):
        create_model(ModelConfig(name="test_resnet", initial_weights=str(tmp_path / "convnext.pt")), 3)


def test_recomputed_bn_statistics_are_the_averages_over_the_given_images():
    import torch
    from torch import nn

    from actgen.trainer.model import recompute_bn_statistics

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(4, 2, 1),
                          nn.BatchNorm2d(2))
    model.train()
    for _ in range(3):                                  # a few training steps: stale running stats
        model(torch.randn(8, 3, 6, 6) * 3 + 1)
    batches = [torch.randn(5, 3, 6, 6) * 2 + 0.5 for _ in range(4)]
    assert recompute_bn_statistics(model, iter(batches), torch.device("cpu")) == 2
    with torch.no_grad():
        feats = torch.cat([model[0](b) for b in batches])                       # the first BN's inputs
    bn = model[1]
    assert torch.allclose(bn.running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-5)
    # Unbiased variance, averaged per batch (PyTorch's cumulative average of batch statistics).
    per_batch = torch.stack([model[0](b).detach().var(dim=(0, 2, 3), unbiased=True) for b in batches])
    assert torch.allclose(bn.running_var, per_batch.mean(0), atol=1e-4)
    assert bn.momentum == 0.1 and model.training                                # put back as it was
    # Deterministic: the same images give the same statistics again.
    before = bn.running_var.clone()
    recompute_bn_statistics(model, iter(batches), torch.device("cpu"))
    assert torch.equal(before, bn.running_var)
