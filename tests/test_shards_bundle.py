"""Classifier bundle: round trip through timm alone, validation, atomic replacement."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from actgen.shards import bundle as bundle_mod
from actgen.shards.bundle import (BundleConfig, bundle_sha256, load_classifier, read_bundle_config,
                                  write_bundle)
from actgen.shards.errors import FormatError

NAMES = ["cat", "dog", "bird"]


def _config(**overrides) -> BundleConfig:
    values = dict(architecture="test_resnet", num_classes=3, class_names=NAMES, input_size=(3, 32, 32),
                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear",
                  dataset_fingerprint="ab" * 32, round=2, epoch=7, metrics={"val_top1": 0.75},
                  model_kwargs={"in_chans": 3}, created="2025-01-01T00:00:00Z", tool_version="test")
    values.update(overrides)
    return BundleConfig(**values)


def _model(config: BundleConfig, seed: int = 0):
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(config.architecture, num_classes=config.num_classes, **config.model_kwargs)
    # Non-trivial BatchNorm statistics, so a strict load that lost buffers would show in the logits.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_round_trip_gives_identical_logits(tmp_path):
    config = _config()
    model = _model(config)
    digest = write_bundle(tmp_path / "bundle", model.state_dict(), config)
    assert sorted(os.listdir(tmp_path)) == ["bundle"]  # no temporary directory left behind
    assert sorted(os.listdir(tmp_path / "bundle")) == ["config.json", "model.safetensors"]
    assert digest == bundle_sha256(tmp_path / "bundle") and len(digest) == 64
    loaded, loaded_config = load_classifier(tmp_path / "bundle")
    assert loaded_config == config
    assert not loaded.training
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.pretrained_cfg["input_size"] == (3, 32, 32)
    assert loaded.pretrained_cfg["std"] == (0.25, 0.25, 0.25)


def test_model_kwargs_are_applied(tmp_path):
    config = _config(model_kwargs={"in_chans": 1}, input_size=(1, 8, 8), mean=(0.5,) * 3)
    model = _model(config)
    write_bundle(tmp_path / "b", model.state_dict(), config)
    loaded, _ = load_classifier(tmp_path / "b")
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_empty_created_and_tool_version_are_filled(tmp_path):
    config = _config(created="", tool_version="")
    write_bundle(tmp_path / "b", _model(config).state_dict(), config)
    read = read_bundle_config(tmp_path / "b")
    assert read.created.endswith("Z") and read.tool_version
    assert dataclasses.replace(read, created="", tool_version="") == config


def test_config_json_is_validated_naming_field(tmp_path):
    config = _config()
    write_bundle(tmp_path / "b", _model(config).state_dict(), config)
    path = tmp_path / "b" / "config.json"
    good = json.loads(path.read_text())
    assert good["format"] == "actgen.classifier-bundle" and good["format_version"] == 1

    def check(mutate, pattern):
        data = json.loads(json.dumps(good))
        mutate(data)
        path.write_text(json.dumps(data))
        with pytest.raises(FormatError, match=pattern) as err:
            read_bundle_config(tmp_path / "b")
        assert str(path) in str(err.value)

    check(lambda d: d.update(num_classes="3"), "field 'num_classes' must be an integer")
    check(lambda d: d.update(num_classes=4), "num_classes is 4 but class_names has 3")
    check(lambda d: d["input_size"].pop(), r"field 'input_size' must be a list of 3 values")
    check(lambda d: d["metrics"].update(val_top1="high"), r"field 'metrics.val_top1' must be a number")
    check(lambda d: d.pop("architecture"), "missing field 'architecture'")
    check(lambda d: d.update(colour="red"), "unknown field.*'colour'")
    check(lambda d: d.update(format="something.else"), "field 'format' must be 'actgen.classifier-bundle'")
    check(lambda d: d.update(format_version=3), "format_version 3 is newer than this reader")
    # Version 2 adds timm's keys, which must agree with the bundle's own and point timm nowhere.
    check(lambda d: d.update(label_names=["cat"]), "need format_version 2")
    check(lambda d: d.update(format_version=2, label_names=["a", "b", "c"]), "label_names must equal class_names")
    check(lambda d: d.update(format_version=2, model_args={"in_chans": 1}), "model_args must equal model_kwargs")
    check(lambda d: d.update(format_version=2, pretrained_cfg={"file": "/etc/passwd"}),
          r"field 'pretrained_cfg.file' = '/etc/passwd': not allowed")
    path.write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        read_bundle_config(tmp_path / "b")


def test_weights_that_do_not_fit_are_rejected(tmp_path):
    config = _config()
    write_bundle(tmp_path / "b", _model(config).state_dict(), config)
    other = _config(num_classes=2, class_names=["a", "b"])
    state = _model(other).state_dict()
    write_bundle(tmp_path / "c", state, other)
    # Put the 2-class weights under the 3-class config.
    os.replace(tmp_path / "c" / "model.safetensors", tmp_path / "b" / "model.safetensors")
    with pytest.raises(FormatError, match="model.safetensors: weights do not fit 'test_resnet' with 3 classes"):
        load_classifier(tmp_path / "b")


def test_missing_bundle_names_file(tmp_path):
    with pytest.raises(FormatError, match="config.json: file not found"):
        load_classifier(tmp_path / "absent")


def test_crash_while_writing_leaves_no_bundle(tmp_path, monkeypatch):
    config = _config()
    state = _model(config).state_dict()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(tmp_path / "b", state, config)
    assert os.listdir(tmp_path) == []


def test_failed_replacement_keeps_old_bundle_whole(tmp_path, monkeypatch):
    config = _config()
    old_digest = write_bundle(tmp_path / "b", _model(config, seed=0).state_dict(), config)
    new_config = _config(epoch=8)
    new_state = _model(new_config, seed=1).state_dict()

    # Crash after the weights are written but before config.json: the old bundle must stay as it was.
    real_dumps = bundle_mod.dumps

    def crash(obj):
        raise RuntimeError("killed")

    monkeypatch.setattr(bundle_mod, "dumps", crash)
    with pytest.raises(RuntimeError, match="killed"):
        write_bundle(tmp_path / "b", new_state, new_config)
    assert os.listdir(tmp_path) == ["b"]
    assert bundle_sha256(tmp_path / "b") == old_digest and read_bundle_config(tmp_path / "b").epoch == 7

    monkeypatch.setattr(bundle_mod, "dumps", real_dumps)
    new_digest = write_bundle(tmp_path / "b", new_state, new_config)
    assert new_digest != old_digest and os.listdir(tmp_path) == ["b"]
    assert read_bundle_config(tmp_path / "b").epoch == 8


def test_replacement_without_atomic_exchange(tmp_path, monkeypatch):
    """The fallback path (two renames) also ends with exactly the new bundle."""
    from actgen.shards import atomic

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    config = _config()
    write_bundle(tmp_path / "b", _model(config, seed=0).state_dict(), config)
    digest = write_bundle(tmp_path / "b", _model(config, seed=1).state_dict(), _config(epoch=9))
    assert os.listdir(tmp_path) == ["b"] and bundle_sha256(tmp_path / "b") == digest
    assert read_bundle_config(tmp_path / "b").epoch == 9
