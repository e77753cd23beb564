"""The round's work list and the build config: pure functions, no rendering."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from actgen.builder.config import load_config
from actgen.builder.plan import make_plan, num_shards, select_sources
from actgen.builder.schedules import draw_modes
from actgen.shards.manifest import HardSample
from actgen.shards.samples import check_key

FP = "ab" * 6
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _hard(n: int) -> list[HardSample]:
    return [HardSample(id=f"{FP}-{i:08d}", label=i % 3, class_name=["cat", "dog", "ship"][i % 3], predicted=0,
                       prob_true=0.1, loss=1.0) for i in range(n)]


def test_plan_is_a_pure_function_of_its_inputs():
    hard = _hard(7)
    a = make_plan(hard, budget=10, seed=3, round=2, shards=3)
    assert a == make_plan(hard, budget=10, seed=3, round=2, shards=3)
    assert a.digest() == make_plan(hard, budget=10, seed=3, round=2, shards=3).digest()
    other_seed = make_plan(hard, budget=10, seed=4, round=2, shards=3)
    other_round = make_plan(hard, budget=10, seed=3, round=3, shards=3)
    assert other_seed.digest() != a.digest() and other_round.digest() != a.digest()
    assert [s.seed for s in a.samples] != [s.seed for s in other_seed.samples]
    # The shard count changes only where samples go, not what they are.
    regrouped = make_plan(hard, budget=10, seed=3, round=2, shards=5)
    assert regrouped.samples == a.samples and regrouped.digest() != a.digest()


def test_budget_cycles_one_permutation_of_the_hard_samples():
    hard = _hard(3)
    picks = select_sources(3, 8, seed=0, round=0)
    assert sorted(picks[:3].tolist()) == [0, 1, 2]                 # a permutation first
    assert all(picks[i] == picks[i % 3] for i in range(8))          # then the same order again
    plan = make_plan(hard, budget=8, seed=0, round=0, shards=2)
    counts = Counter(s.source_id for s in plan.samples)
    assert sorted(counts.values()) == [2, 3, 3]
    # Fewer images than hard samples: drawn without replacement.
    few = select_sources(50, 20, seed=1, round=0)
    assert len(set(few.tolist())) == 20
    # Different seeds give different orders.
    assert select_sources(50, 20, seed=2, round=0).tolist() != few.tolist()


def test_keys_seeds_and_shards():
    plan = make_plan(_hard(4), budget=11, seed=5, round=3, shards=4, prefix="gen")
    keys = [s.key for s in plan.samples]
    assert len(set(keys)) == 11 and all(check_key(k) is None and "." not in k for k in keys)
    first = plan.samples[0]
    assert first.key == f"r0003_{first.source_id}_i000000_s{first.seed}"
    assert [s.index for s in plan.samples] == list(range(11))
    assert len({s.seed for s in plan.samples}) == 11
    assert [len(s.samples) for s in plan.shards] == [3, 3, 3, 2]
    assert [s.filename for s in plan.shards] == [f"gen-{i:06d}.tar" for i in range(4)]
    assert plan.num_samples == 11
    assert num_shards(100, 32, 1) == 4 and num_shards(100, 32, 8) == 8 and num_shards(5, 256, 2) == 2
    with pytest.raises(ValueError, match="min_shards = 9"):
        num_shards(8, 4, 9)
    with pytest.raises(ValueError, match="no hard samples"):
        make_plan([], budget=4, seed=0, round=0, shards=1)


def test_modes_follow_the_round_schedule():
    hard = _hard(5)
    txt = make_plan(hard, budget=40, seed=0, round=0, shards=2, mode="txt2img", horizon=10)
    assert {s.mode for s in txt.samples} == {"txt2img"} and not any(s.adversarial for s in txt.samples)
    fixed = make_plan(hard, budget=40, seed=0, round=0, shards=2, mode="actgen")
    assert {s.mode for s in fixed.samples} == {"actgen"} and all(s.adversarial for s in fixed.samples)
    # With a horizon: the §1.3 draw, exactly draw_modes' for (seed, round).
    early = make_plan(hard, budget=400, seed=0, round=0, shards=2, mode="actgen", horizon=10)
    drawn = draw_modes(400, 0, 10, 0, "actgen")
    assert [s.mode for s in early.samples] == drawn.modes.tolist()
    share = np.mean([s.mode == "txt2img" for s in early.samples])
    assert 0.4 < share < 0.6 and not any(s.adversarial for s in early.samples)
    late = make_plan(hard, budget=400, seed=0, round=9, shards=2, mode="actgen", horizon=10)
    assert {s.mode for s in late.samples} == {"actgen"}
    assert 0.4 < np.mean([s.adversarial for s in late.samples]) < 0.6
    img = make_plan(hard, budget=400, seed=0, round=9, shards=2, mode="img2img", horizon=10)
    assert {s.mode for s in img.samples} == {"img2img"} and not any(s.adversarial for s in img.samples)


def test_config_loading_and_errors(tmp_path):
    paths = ["checkpoint=c", "manifest=m.json", "output.path=o"]
    cfg = load_config(CONFIGS / "build-smoke.yaml", paths)
    assert cfg.generator.path == "tiny" and cfg.schedule.horizon == 3 and cfg.ray.workers == 2
    sd = load_config(CONFIGS / "build-sd21-base.yaml", paths + ["guidance.margin=200"])
    assert sd.guidance.num_steps == 40 and sd.guidance.cfg_scale == 7.5 and sd.guidance.margin == 200
    assert sd.guidance.scaled_guidance_steps == 10 and sd.bank_scope == "run"
    with pytest.raises(ValueError, match=r"config key 'budget' = 0: expected an int in 1\.\.1,000,000"):
        load_config(None, paths + ["budget=0"])
    with pytest.raises(ValueError, match="marginn"):
        load_config(None, paths + ["guidance.marginn=1"])
    with pytest.raises(ValueError, match="mode"):
        load_config(None, paths + ["mode=dream"])
    with pytest.raises(ValueError, match="schedule.horizon"):
        load_config(None, paths + ["schedule.enabled=true", "schedule.horizon=1"])
    with pytest.raises(ValueError, match="output.size"):
        load_config(None, paths + ["output.resize=fixed"])
    with pytest.raises(ValueError, match="config key 'checkpoint'"):
        load_config(None, ["manifest=m.json", "output.path=o"])
    with pytest.raises(ValueError, match="output.min_shards"):
        load_config(None, paths + ["budget=2", "output.min_shards=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: [1\n")
    with pytest.raises(ValueError, match="bad.yaml: not a valid YAML config"):
        load_config(bad, paths)


def test_uniform_targets_draw_every_class_evenly_whatever_the_hard_samples():
    from actgen.builder.plan import uniform_labels

    names = [f"c{i}" for i in range(5)]
    only_class_3 = [HardSample(id=f"abc-{i}", label=3, class_name="c3", predicted=0, prob_true=0.1, loss=2.0)
                    for i in range(4)]
    for hard in (only_class_3, []):
        plan = make_plan(hard, budget=12, seed=1, round=2, shards=3, mode="txt2img", targets="uniform",
                         class_names=names)
        counts = Counter(s.label for s in plan.samples)
        assert sorted(counts) == [0, 1, 2, 3, 4] and max(counts.values()) - min(counts.values()) <= 1
        assert all(s.mode == "txt2img" and s.source_id == "" and s.class_name == names[s.label]
                   for s in plan.samples)
    # Seeded: the same draw for the same (seed, round); another round draws another order.
    assert (uniform_labels(5, 12, 1, 2) == uniform_labels(5, 12, 1, 2)).all()
    assert not (uniform_labels(5, 12, 1, 2) == uniform_labels(5, 12, 1, 3)).all()
    # The classes that get the remainder change from round to round: over a run of 16-image rounds
    # on 10 classes no class is favoured (the first classes used to get them every round).
    totals = Counter()
    for r in range(200):
        per_round = Counter(uniform_labels(10, 16, 0, r).tolist())
        assert sorted(set(per_round.values())) == [1, 2] and sum(per_round.values()) == 16
        totals.update(per_round)
    assert max(totals.values()) - min(totals.values()) < 0.1 * 200 * 1.6
    with pytest.raises(ValueError, match="text-to-image only"):
        make_plan(only_class_3, budget=4, seed=0, round=0, shards=1, mode="actgen", targets="uniform",
                  class_names=names)


def test_renders_per_hard_sample_cap_the_round_budget():
    from actgen.builder.plan import effective_budget

    assert effective_budget(64, 3, None) == 64
    assert effective_budget(64, 3, 4) == 12            # 3 hard samples x 4 renders each
    assert effective_budget(64, 40, 4) == 64           # enough hard samples: the budget
    plan = make_plan(_hard(3), budget=effective_budget(64, 3, 4), seed=0, round=0, shards=2)
    assert max(Counter(s.source_id for s in plan.samples).values()) == 4
    with pytest.raises(ValueError, match="max_renders_per_sample"):
        load_config(None, ["checkpoint=c", "manifest=m", "output.path=o", "max_renders_per_sample=0"])
    with pytest.raises(ValueError, match="targets"):
        load_config(None, ["checkpoint=c", "manifest=m", "output.path=o", "targets=uniform", "mode=actgen"])
