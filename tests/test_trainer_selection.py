"""``rounds.selection``: each rule by what it selects on a known set of predictions, the caps, the
start condition, the manifest header, and a trainer run and a builder run end to end."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from actgen.shards.errors import FormatError
from actgen.shards.manifest import HardSample, HardSampleManifest, read_manifest, write_manifest
from actgen.trainer.config import SelectionConfig, load_config
from actgen.trainer.distributed import Runtime
from actgen.trainer.evaluate import Predictions, predict
from actgen.trainer.selection import Hardness, fires, score, select

# Six hold-out samples over three classes, chosen so that the four rules rank them differently.
PROBS = np.array([
    [0.70, 0.20, 0.10],   # 0: label 0, right, confident
    [0.40, 0.30, 0.30],   # 1: label 1, wrong: p_true 0.3, margin -0.1, the flattest (highest entropy)
    [0.10, 0.10, 0.80],   # 2: label 2, right, the easiest
    [0.05, 0.90, 0.05],   # 3: label 0, wrong and confident: the highest loss, the smallest margin
    [0.60, 0.40, 0.00],   # 4: label 1, wrong: p_true 0.4 (easier than 1 by loss), margin -0.2 (harder)
    [0.30, 0.20, 0.50],   # 5: label 2, right but unsure
])
LABELS = np.array([0, 1, 2, 0, 1, 2])
# loss -log p_true:       3 (3.00) > 1 (1.20) > 4 (0.92) > 5 (0.69) > 0 (0.36) > 2 (0.22)
# entropy (nats):         1 (1.09) > 5 (1.03) > 0 (0.80) > 4 (0.67) > 2 (0.64) > 3 (0.39)
# margin p_true - other:  3 (-.85) < 4 (-.20) < 1 (-.10) < 5 (0.20) < 0 (0.50) < 2 (0.70)
BY_LOSS, BY_ENTROPY, BY_MARGIN = [3, 1, 4, 5, 0, 2], [1, 5, 0, 4, 2, 3], [3, 4, 1, 5, 0, 2]


# The paper's rule: every mistake (the default ranks by loss, top 64).
PAPER = SelectionConfig(rule="misclassified", k=None)


def _select(**cfg) -> list[int]:
    chosen, _ = select(Hardness.from_probs(PROBS, LABELS), SelectionConfig(**{"k": None, **cfg}))
    return chosen.tolist()


def test_the_statistics_of_known_probabilities():
    h = Hardness.from_probs(PROBS, LABELS)
    assert h.predicted.tolist() == [0, 0, 2, 1, 0, 2]
    np.testing.assert_allclose(h.loss, -np.log([0.7, 0.3, 0.8, 0.05, 0.4, 0.5]))
    np.testing.assert_allclose(h.margin, [0.5, -0.1, 0.7, -0.85, -0.2, 0.2])
    np.testing.assert_allclose(h.entropy[4], -(0.6 * math.log(0.6) + 0.4 * math.log(0.4)))   # 0 log 0 = 0
    np.testing.assert_allclose(score("margin", h), -h.margin)


@pytest.mark.parametrize("rule, expected", [
    ("misclassified", [3, 1, 4]),     # the mistakes only, highest loss first (the paper's set)
    ("loss", BY_LOSS[:4]),
    ("entropy", BY_ENTROPY[:4]),
    ("margin", BY_MARGIN[:4]),
])
def test_each_rule_selects_its_hardest_in_order(rule, expected):
    k = None if rule == "misclassified" else 4
    assert _select(rule=rule, k=k) == expected


def test_selecting_correct_samples_by_loss_entropy_and_margin():
    # The whole hold-out ranked: right answers (0, 2, 5) are candidates too.
    assert _select(rule="loss", k=6) == BY_LOSS
    assert _select(rule="entropy", k=6) == BY_ENTROPY
    assert _select(rule="margin", k=6) == BY_MARGIN
    assert _select(rule="entropy", k=100) == BY_ENTROPY     # k above the hold-out: all of it


def test_k_fraction_and_drop_hardest():
    assert _select(rule="loss", k=1) == [3]
    assert _select(rule="misclassified", k=2) == [3, 1]               # a cap on the mistakes
    assert _select(rule="loss", fraction=0.5) == [3, 1, 4]            # 3 of the 6
    assert _select(rule="loss", fraction=0.1) == [3]                  # 0.6 -> rounded down, at least one
    assert _select(rule="loss", k=4, drop_hardest=0.5) == [4, 5]      # 2 of 4 dropped from the hard end
    assert _select(rule="loss", k=4, drop_hardest=0.3) == [1, 4, 5]   # floor(1.2) = 1
    assert _select(rule="misclassified", drop_hardest=0.5) == [1, 4]  # floor(1.5) = 1 of 3 mistakes
    assert _select(rule="margin", k=1, drop_hardest=0.9) == [3]       # floor(0.9) = 0: one always stays
    assert _select(rule="entropy", k=5, drop_hardest=0.4) == [0, 4, 2]


def test_ties_are_broken_by_position_and_no_mistakes_selects_nothing():
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 0, 0, 0])                  # 0 and 2 wrong with the same loss; 1 and 3 right
    h = Hardness.from_probs(probs, labels)
    chosen, candidates = select(h, SelectionConfig(rule="loss", k=4))
    assert chosen.tolist() == [0, 2, 1, 3] and candidates == 4
    chosen, candidates = select(h, PAPER)
    assert chosen.tolist() == [0, 2] and candidates == 2
    right = Hardness.from_probs(probs[[1, 3]], labels[[1, 3]])
    chosen, candidates = select(right, PAPER)
    assert chosen.tolist() == [] and candidates == 0


def test_the_start_condition_by_epoch_and_by_accuracy():
    assert fires(SelectionConfig(), 0, 0.0) == (True, None)
    by_epoch = SelectionConfig(start_epoch=2)
    fired, reason = fires(by_epoch, 1, 0.9)
    assert not fired and reason == "epoch 1 < rounds.selection.start_epoch 2"
    assert fires(by_epoch, 2, 0.0) == (True, None)
    by_acc = SelectionConfig(min_holdout_acc=0.5)
    fired, reason = fires(by_acc, 5, 0.4)
    assert not fired and reason == "hold-out accuracy 0.4000 < rounds.selection.min_holdout_acc 0.5"
    assert fires(by_acc, 5, 0.5) == (True, None)
    assert not fires(by_acc, 5, float("nan"))[0]


class _Images:
    fingerprint = "f" * 64

    def sample_id(self, row: int) -> str:
        return f"{'f' * 12}-{row:08d}"


def _predictions() -> Predictions:
    h = Hardness.from_probs(PROBS, LABELS)
    return Predictions(indices=np.arange(100, 106), labels=h.labels, predicted=h.predicted, prob_true=h.prob_true,
                       loss=h.loss, entropy=h.entropy, margin=h.margin)


def test_hard_samples_and_their_record():
    holdout, names = _predictions(), ["a", "b", "c"]           # accuracy 3/6
    samples, record = holdout.hard_samples(_Images(), names, SelectionConfig(rule="margin", k=2), epoch=3)
    assert [s.id for s in samples] == [_Images().sample_id(103), _Images().sample_id(104)]
    assert samples[0] == HardSample(id=samples[0].id, label=0, class_name="a", predicted=1, prob_true=0.05,
                                    loss=pytest.approx(-math.log(0.05)))
    assert record == {"rule": "margin", "k": 2, "fraction": None, "drop_hardest": 0.0, "start_epoch": 0,
                      "min_holdout_acc": None, "fired": True, "reason": None, "num_candidates": 6}
    samples, record = holdout.hard_samples(_Images(), names, PAPER, epoch=0)
    assert [s.id[-3:] for s in samples] == ["103", "101", "104"] and record["num_candidates"] == 3
    for cfg, epoch in ((dataclasses.replace(PAPER, start_epoch=4), 3), (dataclasses.replace(PAPER, min_holdout_acc=0.6), 3)):
        samples, record = holdout.hard_samples(_Images(), names, cfg, epoch=epoch)
        assert samples == [] and record["fired"] is False and record["reason"] and record["num_candidates"] == 0
    # Every hold-out sample right: the paper's rule selects nothing, and the round does not fire.
    right = dataclasses.replace(holdout, predicted=holdout.labels.copy())
    samples, record = right.hard_samples(_Images(), names, PAPER, epoch=3)
    assert samples == [] and record["fired"] is False and "no searched image selected" in record["reason"]


def test_predict_computes_the_same_statistics_as_the_probabilities():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    inputs, labels = torch.randn(10, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    loader = [(inputs[:6], labels[:6], torch.arange(6)), (inputs[6:], labels[6:], torch.arange(6, 10))]
    got = predict(model, loader, np.arange(20, 30), Runtime(device=torch.device("cpu")))
    with torch.no_grad():
        want = Hardness.from_probs(model(inputs).softmax(-1).double().numpy(), labels.numpy())
    assert got.indices.tolist() == list(range(20, 30))
    for name in ("predicted", "prob_true", "loss", "entropy", "margin"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("overrides, message", [
    (["rounds.selection.rule=loss", "rounds.selection.k=null"],
     "config key 'rounds.selection.k' = None: expected an int >= 1 (or rounds.selection.fraction) when "
     "rounds.selection.rule is 'loss'"),
    (["rounds.selection.rule=margin", "rounds.selection.k=0"], "config key 'rounds.selection.k' = 0"),
    (["rounds.selection.rule=entropy", "rounds.selection.k=2", "rounds.selection.fraction=0.1"],
     "config key 'rounds.selection.fraction' = 0.1: expected null when rounds.selection.k is set"),
    (["rounds.selection.fraction=0.5"],
     "config key 'rounds.selection.fraction' = 0.5: expected null when rounds.selection.k is set (k = 64)"),
    (["rounds.selection.fraction=1.5"], "config key 'rounds.selection.fraction' = 1.5"),
    (["rounds.selection.drop_hardest=1.0"],
     "config key 'rounds.selection.drop_hardest' = 1.0: expected a share in [0, 1)"),
    (["rounds.selection.start_epoch=-1"], "config key 'rounds.selection.start_epoch' = -1"),
    (["rounds.selection.min_holdout_acc=1.2"], "config key 'rounds.selection.min_holdout_acc' = 1.2"),
    (["rounds.selection.rule=hardest"], "key 'rounds.selection.rule': Invalid value 'hardest'"),
])
def test_config_validation_names_the_key(overrides, message):
    with pytest.raises(ValueError) as e:
        load_config(None, overrides)
    assert message in str(e.value)


def test_the_default_ranks_by_loss_and_the_paper_is_two_keys_away():
    assert load_config(None, []).rounds.selection == SelectionConfig(rule="loss", k=64, fraction=None,
                                                                     drop_hardest=0.0, start_epoch=0,
                                                                     min_holdout_acc=None)
    paper = load_config(None, ["rounds.search=holdout", "data.holdout_fraction=0.1",
                               "rounds.selection.rule=misclassified", "rounds.selection.k=null"])
    assert paper.rounds.selection == PAPER


def test_manifest_selection_header_round_trips_and_is_optional(write_round, tmp_path):
    directory, _ = write_round(tmp_path / "1")
    path = directory / "hard_samples.json"
    data = json.loads(path.read_text())
    del data["header"]["selection"]                                    # a manifest from before the field
    path.write_text(json.dumps(data))
    old = read_manifest(path)
    assert old.header.selection == {}
    record = {"rule": "loss", "k": 3, "fired": True, "reason": None, "num_candidates": 180}
    write_manifest(path, dataclasses.replace(old, header=dataclasses.replace(old.header, selection=record)))
    assert read_manifest(path).header.selection == record
    not_fired = dataclasses.replace(old.header, selection={"fired": False, "reason": "epoch 0 < 1"})
    with pytest.raises(FormatError, match="'header.selection.fired' is false .* lists 5 samples"):
        write_manifest(path, dataclasses.replace(old, header=not_fired))
    write_manifest(path, HardSampleManifest(header=not_fired))
    assert read_manifest(path).samples == []


@pytest.mark.usefixtures("torch_one_thread")
def test_a_trainer_run_records_the_selection_and_the_start_condition(tiny_train_config):
    from actgen.trainer.run import run

    cfg = tiny_train_config("synthetic.source=none", "rounds.selection.rule=loss", "rounds.selection.k=3",
                            "rounds.selection.start_epoch=1")
    run(cfg)
    rounds = cfg.resolved_run_dir() / "rounds"
    early, late = read_manifest(rounds / "0" / "hard_samples.json"), read_manifest(rounds / "1" / "hard_samples.json")
    # Round 0 ends after epoch 0, before start_epoch: its checkpoint and an empty manifest.
    assert early.samples == [] and (rounds / "0" / "checkpoint" / "model.safetensors").is_file()
    assert early.header.selection["fired"] is False
    assert early.header.selection["reason"] == "epoch 0 < rounds.selection.start_epoch 1"
    # Round 1: the 3 highest-loss hold-out samples, hardest first, right answers allowed.
    assert len(late.samples) == 3
    assert [s.loss for s in late.samples] == sorted((s.loss for s in late.samples), reverse=True)
    assert late.header.selection == {"rule": "loss", "k": 3, "fraction": None, "drop_hardest": 0.0,
                                     "start_epoch": 1, "min_holdout_acc": None, "fired": True, "reason": None,
                                     "num_candidates": late.header.num_evaluated}


def _not_fired_round(write_round, directory, fired=False):
    directory, _ = write_round(directory)
    path = directory / "hard_samples.json"
    manifest = read_manifest(path)
    selection = {"rule": "misclassified", "fired": fired, "reason": "epoch 1 < rounds.selection.start_epoch 3"}
    write_manifest(path, HardSampleManifest(header=dataclasses.replace(manifest.header, selection=selection)))
    return directory


@pytest.mark.usefixtures("torch_one_thread")
def test_the_builder_renders_uniform_classes_for_a_round_that_did_not_fire(build_config, write_round, tmp_path):
    from actgen.builder.outputs import BUILD_FILE
    from actgen.builder.pipeline import run as build
    from actgen.shards.reader import ShardRandomAccess
    from actgen.shards.verify import verify

    directory = _not_fired_round(write_round, tmp_path / "rounds" / "1")
    out = tmp_path / "shards"
    cfg = build_config(f"checkpoint={directory / 'checkpoint'}", f"manifest={directory / 'hard_samples.json'}",
                       "budget=6", output=out)
    assert cfg.targets == "hard" and cfg.mode == "actgen"
    result = build(cfg)
    assert verify(out).num_samples == 6 == result.index.num_samples
    data = ShardRandomAccess(out)
    provenance = [data.sample(i).provenance for i in range(len(data))]
    assert {p["guidance"]["mode"] for p in provenance} == {"txt2img"} and {p["source_id"] for p in provenance} == {""}
    assert len({p["label"] for p in provenance}) == 6                  # 6 images over 10 classes: all distinct
    settings = json.loads((out / BUILD_FILE).read_text())
    assert settings["settings"]["round_not_fired"] == "epoch 1 < rounds.selection.start_epoch 3"
    assert settings["config"]["targets"] == "uniform" and settings["config"]["mode"] == "txt2img"

    # An empty manifest of a round that fired (every hold-out sample right) is still refused.
    fired = _not_fired_round(write_round, tmp_path / "rounds" / "2", fired=True)
    with pytest.raises(FormatError, match="lists no hard samples"):
        build(build_config(f"checkpoint={fired / 'checkpoint'}", f"manifest={fired / 'hard_samples.json'}",
                           output=tmp_path / "other"))
