"""A build (``actgen.builder.pipeline.run``, local executor, actgen mode) with a generator fitted by
``actgen.fitting.fit`` writes a verified shard set: the builder's attention-mask and gradient
guidance run on it unchanged."""
from __future__ import annotations

import json

import pytest

from actgen.builder.pipeline import run as build
from actgen.fitting.config import load_fit_config
from actgen.fitting.fit import run as fit
from actgen.shards.fit_record import FIT_RECORD_FILE
from actgen.shards.reader import ShardRandomAccess
from actgen.shards.sources import DIGIT_NAMES
from actgen.shards.verify import verify

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_build_with_a_fitted_generator_writes_a_verified_shard_set(build_config, tiny_fit, tmp_path):
    gen_dir = tmp_path / "gen"
    fit(load_fit_config(None, [f"output='{gen_dir}'", *tiny_fit]))
    record = json.loads((gen_dir / FIT_RECORD_FILE).read_text())
    res = record["builder_settings"]["generator.attention_resolution"]
    cfg = build_config(f"generator.path='{gen_dir}'", f"generator.attention_resolution={res}", "mode=actgen",
                       "generator.device=cpu", "budget=4")
    result = build(cfg)
    report = verify(tmp_path / "shards", class_names=list(DIGIT_NAMES))
    assert report.num_samples == 4 and result.index.image_size == (8, 8)
    data = ShardRandomAccess(tmp_path / "shards")
    for i in range(len(data)):
        prov = data.sample(i).provenance
        assert prov["generator"]["weights_sha256"] == record["weights_sha256"]
        assert prov["guidance"]["mode"] == "actgen"
