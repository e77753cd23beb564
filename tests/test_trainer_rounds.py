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
