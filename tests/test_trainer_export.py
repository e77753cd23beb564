"""The classifier to take away (``final/``) and runs that start from pretrained timm weights."""
from __future__ import annotations

import json

import pytest
import torch

from actgen.shards.bundle import read_bundle_config
from actgen.shards.errors import FormatError
from actgen.trainer.config import load_config
from actgen.trainer.model import create_model
from actgen.trainer.run import run


def read_bundle(directory):
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors")), read_bundle_config(directory)


def _logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_final_is_the_ema_bundle_a_folder_timm_loads_with_the_last_weights_beside_each_stored_once(
        tiny_train_config, tmp_path):
    import timm

    cfg = tiny_train_config("synthetic.source=none", "train.epochs=2", "rounds.horizon=1", "rounds.merge_epoch=2",
                            "train.ema_decay=0.5")
    summary = run(cfg)
    final = tmp_path / "run" / "final"
    assert summary["complete"] and sorted(p.name for p in final.iterdir()) == [
        "README.md", "config.json", "last", "model.safetensors"]
    # Two weight files for two sets of weights: nothing stored twice.
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*.safetensors")) == [
        "last/model.safetensors", "model.safetensors"]
    last, ema = read_bundle(final / "last"), read_bundle(final)
    assert ema[1].format_version == 2 and last[1].format_version == 1
    # The model card says what the run was, from the run's own records.
    from huggingface_hub import ModelCard

    card = ModelCard.load(final / "README.md")
    assert card.data.library_name == "timm" and card.data.license == "other"
    assert '`"test_resnet"` (timm), 10 classes' in card.text and "Rounds of active generation: 1" in card.text
    assert f"top-1 {100 * summary['final']['test_acc']:.2f}%" in card.text
    names = last[1].class_names
    assert last[1].epoch == 1 and last[1].metrics["test_acc"] == pytest.approx(summary["final"]["test_acc"])
    assert ema[1].metrics["test_acc"] == pytest.approx(summary["final"]["ema_test_acc"])
    # The EMA differs from the last weights (decay 0.5 over the steps), and final/ carries the EMA's.
    assert any(not torch.equal(last[0][k], ema[0][k]) for k in last[0] if last[0][k].is_floating_point())

    x = torch.randn(3, 3, 16, 16)
    reference = create_model(cfg.model, len(names))
    reference.load_state_dict(ema[0])
    timm_config = json.loads((final / "config.json").read_text())
    assert timm_config["label_names"] == names and timm_config["pretrained_cfg"]["input_size"] == [3, 16, 16]

    by_folder = timm.create_model(f"local-dir:{final}", pretrained=True)
    assert by_folder.pretrained_cfg["label_names"] == names
    torch.testing.assert_close(_logits(by_folder, x), _logits(reference, x))
    by_file = timm.create_model(cfg.model.name, pretrained=True, num_classes=len(names),
                                pretrained_cfg_overlay={"file": str(final / "model.safetensors"),
                                                        "num_classes": len(names)})
    torch.testing.assert_close(_logits(by_file, x), _logits(reference, x))


def test_without_ema_final_takes_the_last_weights_and_a_stopped_run_writes_none(tiny_train_config, tmp_path):
    from safetensors.torch import load_file

    cfg = tiny_train_config("synthetic.source=none", "train.epochs=2", "rounds.horizon=1", "rounds.merge_epoch=2")
    assert not run(cfg, stop_after=1)["complete"]
    assert not (tmp_path / "run" / "final").exists()
    run(cfg, resume=True)
    final = tmp_path / "run" / "final"
    assert sorted(p.name for p in final.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    weights, bundle = load_file(str(final / "model.safetensors")), read_bundle(final)
    assert bundle[1].label_names == bundle[1].class_names and bundle[1].epoch == 1
    from actgen.shards.bundle import load_classifier

    model, _ = load_classifier(final)   # the builder's loader reads the same folder
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)


def test_a_run_starts_from_pretrained_weights_and_the_head_of_another_size_is_new(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("test_resnet", num_classes=7)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    cfg = load_config(None, ["model.name=test_resnet", "model.pretrained=true",
                             f"model.pretrained_file={tmp_path / 'w.safetensors'}"])
    model = create_model(cfg.model, num_classes=10)
    own, theirs = model.state_dict(), source.state_dict()
    head = {k for k in own if k.startswith(model.pretrained_cfg["classifier"])}
    assert head and all(torch.equal(own[k], theirs[k]) for k in own if k not in head)
    assert own[next(iter(sorted(head)))].shape[0] == 10

    plain = create_model(load_config(None, ["model.name=test_resnet"]).model, num_classes=10)
    assert not all(torch.equal(plain.state_dict()[k], theirs[k]) for k in own if k not in head
                   and theirs[k].is_floating_point())


def test_pretrained_inputs_are_checked(tmp_path):
    with pytest.raises(ValueError, match="model.allow_download=true"):
        create_model(load_config(None, ["model.name=test_resnet", "model.pretrained=true"]).model, num_classes=3)
    with pytest.raises(FileNotFoundError, match="model.pretrained_file"):
        create_model(load_config(None, ["model.name=test_resnet", "model.pretrained=true",
                                        f"model.pretrained_file={tmp_path / 'nope.safetensors'}"]).model, 3)
    # Junk bytes, as a .safetensors or a .pth: one line of the project's, never torch's advice to
    # load the file with weights_only=False.
    for name in ("junk.safetensors", "junk.pth"):
        (tmp_path / name).write_bytes(b"not weights at all")
        with pytest.raises(FormatError, match=f"{name}: not a weights file this trainer loads") as e:
            create_model(load_config(None, ["model.name=test_resnet", "model.pretrained=true",
                                            f"model.pretrained_file={tmp_path / name}"]).model, 3)
        assert "weights_only" not in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="model.pretrained_file"):
        load_config(None, [f"model.pretrained_file={tmp_path / 'w.safetensors'}"])
