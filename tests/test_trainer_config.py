"""Config loading: defaults, YAML, dotlist overrides, and errors that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from actgen.trainer.config import Config, config_to_yaml, diff_configs, load_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_follow_the_paper_cifar_recipe_but_search_the_training_images():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert (cfg.optim.opt, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("momentum", 0.1, 0.9, 1e-4)
    assert cfg.rounds.every == 1 and cfg.rounds.horizon is None and cfg.rounds.merge_epoch is None
    # The study's pick (docs/study.md, PLAN-2): nothing held out, loss top-64 of the training images.
    assert cfg.data.holdout_fraction == 0.0 and cfg.rounds.search == "train"
    assert (cfg.rounds.selection.rule, cfg.rounds.selection.k) == ("loss", 64)


def test_the_paper_recipes_keep_the_hold_out_search():
    for name in ("train-cifar10-sd21", "train-cifar100-sd21", "train-imagenet-resnet50"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert cfg.data.holdout_fraction > 0 and cfg.rounds.search == "holdout", name
        assert (cfg.rounds.selection.rule, cfg.rounds.selection.k) == ("misclassified", None), name


def test_a_hold_out_search_without_a_hold_out_names_the_key():
    with pytest.raises(ValueError, match=r"config key 'data.holdout_fraction' = 0.0.*rounds.search is 'holdout'"):
        load_config(None, ["rounds.search=holdout"])


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 8\nmodel:\n  name: resnet10t\n  kwargs: {in_chans: 3}\n")
    cfg = load_config(path, ["train.epochs=6", "input.mean=[0.1,0.2,0.3]", "data.source.class_names=[a,b]"])
    assert cfg.train.epochs == 6
    assert cfg.model.name == "resnet10t" and cfg.model.kwargs == {"in_chans": 3}
    assert cfg.input.mean == (0.1, 0.2, 0.3)
    assert cfg.data.source.class_names == ["a", "b"]


@pytest.mark.parametrize("overrides, expected", [
    (["model.nme=resnet18"], "Key 'nme' not in 'ModelConfig'. Did you mean: 'name'"),
    (["train.epochs=abc"], "key 'train.epochs'"),
    (["input.scale=[0.1,x]"], "key 'input.scale'"),
    (["train.amp=float8"], "key 'train.amp'"),
    (["synthetic.on_missing=sometimes"], "key 'synthetic.on_missing'"),
    (["train.epochs=0"], "config key 'train.epochs' = 0"),
    (["data.holdout_fraction=1.5"], "config key 'data.holdout_fraction' = 1.5"),
    (["input.mean=[0.5,0.5]"], "config key 'input.mean'"),
    (["synthetic.pattern=/data/shards"], "config key 'synthetic.pattern'"),
    (["synthetic.pattern=/data/{epoch}"], "only the placeholders"),
    (["train.epochs=10", "rounds.merge_epoch=2", "rounds.search=holdout", "data.holdout_fraction=0.1"],
     "config key 'rounds.merge_epoch' = 2"),
    (["train.epochs=10", "rounds.horizon=11"], "config key 'rounds.horizon' = 11"),
    (["synthetic.mixing=fraction", "synthetic.fraction=0.001"], "config key 'synthetic.fraction' = 0.001"),
    (["train.mixup_alpha=0.2", "loader.batch_size=63"], "config key 'loader.batch_size' = 63"),
    (["data.test_fraction=0.2", "data.test_source.path=x"], "config key 'data.test_fraction'"),
    (["model.kwargs={num_classes: 3}"], "config key 'model.kwargs'"),
    (["epochs"], "override 'epochs': expected key.sub=value"),
])
def test_bad_values_name_the_key(overrides, expected):
    with pytest.raises(ValueError) as info:
        load_config(None, overrides)
    assert expected in str(info.value)


def test_typo_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ValueError, match=r"typo\.yaml: key 'train.epochz'.*Did you mean: 'epochs'"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [epochs: 3\n")
    with pytest.raises(ValueError, match="bad.yaml: not a valid YAML config"):
        load_config(bad)


def test_resolved_yaml_round_trips_and_diff_names_keys(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "model.kwargs={drop_block_rate: 0.1}"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config_to_yaml(cfg))
    again = load_config(path)
    assert again == cfg
    other = load_config(path, ["optim.lr=0.5", "data.source.split=test"])
    assert diff_configs(cfg, other) == ["data.source.split", "optim.lr"]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("train-*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.rounds.enabled
    assert "{round}" in cfg.synthetic.pattern
