"""A round written twice (a resumed run redoing the epoch that ended it) keeps its manifest."""
from __future__ import annotations

import time

from actgen.shards.manifest import HardSample, read_manifest
from actgen.shards.sources import DataSource, load_source
from actgen.trainer.model import create_model
from actgen.trainer.rounds import write_round


def test_an_unchanged_round_is_not_rewritten_and_a_changed_one_is(tiny_train_config, tmp_path):
    cfg = tiny_train_config()
    digits = load_source(DataSource())
    state = create_model(cfg.model, 10, list(digits.class_names)).state_dict()
    hard = [HardSample(id=digits.sample_id(i), label=digits.label(i), class_name=digits.class_names[digits.label(i)],
                       predicted=(digits.label(i) + 1) % 10, prob_true=0.2, loss=1.6) for i in range(3)]

    def write(samples):
        return write_round(tmp_path, 0, 0, cfg, state, digits, samples, 50, {"holdout_acc": 0.9}, num_rounds=2)

    path = write(hard)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    time.sleep(1.1)  # the manifest's 'created' stamp has whole seconds
    write(hard)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    write(hard[:2])
    assert len(read_manifest(path).samples) == 2


def test_old_round_bundles_are_pruned_once_their_sets_are_in_the_pool(tiny_train_config, write_digit_shards,
                                                                      tmp_path):
    """checkpoint.keep_rounds: the bundles of rounds whose data sets joined the pool go, but the
    last k; a round whose set has not joined keeps its bundle (a builder may need it); manifests stay."""
    from actgen.trainer.rounds import prune_bundles
    from actgen.trainer.run import run

    for r in range(3):
        write_digit_shards(tmp_path / "sets" / f"r{r}", n=6, round=r)
    cfg = tiny_train_config(f"synthetic.pattern={tmp_path}/sets/r{{round}}", "train.epochs=5", "rounds.horizon=4",
                            "rounds.merge_epoch=4", "checkpoint.keep_rounds=1")
    summary = run(cfg)
    run_dir = cfg.resolved_run_dir()
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2, 3]
    assert [e["round"] for e in summary["pool"]] == [0, 1, 2]          # round 3's set never came
    kept = {r for r in range(4) if (run_dir / "rounds" / str(r) / "checkpoint").is_dir()}
    assert kept == {2, 3}
    assert all((run_dir / "rounds" / str(r) / "hard_samples.json").is_file() for r in range(4))
    assert prune_bundles(run_dir, [0, 1, 2], None) == []
