"""A build (``actgen.builder.pipeline.run``, local executor, actgen mode) with a generator fitted by
``actgen.builder.fit`` writes a verified shard set: the builder's attention-mask and gradient
guidance run on it unchanged."""
from __future__ import annotations

import json

import pytest

from actgen.builder.fit import RECORD, run as fit
from actgen.builder.fit_config import load_fit_config
from actgen.builder.pipeline import run as build
from actgen.shards.reader import ShardRandomAccess
from actgen.shards.sources import DIGIT_NAMES
from actgen.shards.verify import verify

from test_fit_generator import TINY_FIT

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_build_with_a_fitted_generator_writes_a_verified_shard_set(build_config, tmp_path):
    gen_dir = tmp_path / "gen"
    fit(load_fit_config(None, [f"output='{gen_dir}'", *TINY_FIT]))
    record = json.loads((gen_dir / RECORD).read_text())
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
