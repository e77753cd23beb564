"""Budget allocation policies: which guide, class, role and mode every planned image gets."""
from __future__ import annotations

from collections import Counter

import pytest

from actgen.builder.config import AllocationConfig
from actgen.builder.plan import allocate, class_shares, make_plan, plan_stats, select_sources
from actgen.shards.manifest import HardSample

FP = "cd" * 6
NAMES = ["zero", "one", "two", "three"]


def _h(row: int, label: int, loss: float) -> HardSample:
    return HardSample(id=f"{FP}-{row:08d}", label=label, class_name=NAMES[label], predicted=(label + 1) % 4,
                      prob_true=0.1, loss=loss)


# Manifest order is hardest first: class 0 has three mistakes, class 1 one, class 2 none, class 3 five.
HARD = [_h(0, 0, 5.0), _h(10, 3, 4.8), _h(1, 0, 4.0), _h(11, 3, 3.9), _h(20, 1, 3.5), _h(2, 0, 3.0),
        _h(12, 3, 2.0), _h(13, 3, 1.5), _h(14, 3, 1.0)]
POOL = [(f"{FP}-{100 + i:08d}", i % 4) for i in range(12)]      # three training images per class


def test_paper_rule_is_the_official_one():
    # More mistakes than the budget: a random subset, one render each (hunto/ActGen train.py).
    plan = make_plan(HARD, budget=6, seed=1, round=0, shards=2, mode="img2img")
    ids = [s.source_id for s in plan.samples]
    assert len(set(ids)) == 6 and set(ids) <= {h.id for h in HARD}
    assert ids == [HARD[p].id for p in select_sources(len(HARD), 6, 1, 0).tolist()]
    assert {s.role for s in plan.samples} == {"hard"} and {s.mode for s in plan.samples} == {"img2img"}
    # Fewer mistakes than the budget: the permutation cycles.
    cycled = Counter(s.source_id for s in make_plan(HARD[:2], 5, 1, 0, 1, mode="img2img").samples)
    assert sorted(cycled.values()) == [2, 3]


def test_class_shares_split_the_budget_evenly():
    shares = class_shares(4, 10, seed=0, round=0)
    assert shares.sum() == 10 and sorted(shares.tolist()) == [2, 2, 3, 3]
    assert class_shares(4, 8, 0, 0).tolist() == [2, 2, 2, 2]


def test_balanced_takes_each_class_hardest_first_then_fills_without_a_guide():
    targets = allocate(HARD, 8, seed=0, round=0, policy="balanced", class_names=NAMES)   # 2 per class
    by_class = {y: [t for t in targets if t.label == y] for y in range(4)}
    assert all(len(v) == 2 for v in by_class.values())
    # Class 0: its two hardest mistakes; class 3 likewise; one render each.
    assert sorted(t.source_id for t in by_class[0]) == sorted([HARD[0].id, HARD[2].id])
    assert sorted(t.source_id for t in by_class[3]) == sorted([HARD[1].id, HARD[3].id])
    # Class 1: its one mistake, then a fill; class 2 (no mistake): fills only, no guide.
    assert Counter(t.role for t in by_class[1]) == {"hard": 1, "fill": 1}
    assert [t.source_id for t in by_class[2]] == ["", ""] and {t.role for t in by_class[2]} == {"fill"}
    plan = make_plan(HARD, 8, 0, 0, 2, mode="actgen", class_names=NAMES, allocation="balanced")
    for s in plan.samples:       # fills without a guide are text-to-image, never adversarial
        assert (s.mode, s.adversarial) == (("actgen", True) if s.source_id else ("txt2img", False))
        assert s.key.split("_")[1] == (s.source_id or f"c{s.label}")


def test_balanced_renders_per_sample_cap_and_train_fill():
    targets = allocate(HARD, 12, seed=0, round=0, policy="balanced", class_names=NAMES, max_per_sample=2,
                       fill="train", guide_pool=POOL)       # 3 per class
    count = Counter(t.source_id for t in targets)
    assert count[HARD[4].id] == 2                             # class 1's only mistake: twice, then a fill
    assert max(count[h.id] for h in HARD) <= 2
    fills = [t for t in targets if t.role == "fill"]
    assert {t.label for t in fills} == {1, 2}
    pool_ids = {sid: y for sid, y in POOL}
    assert all(pool_ids[t.source_id] == t.label for t in fills)     # guided by training images of the class
    assert len({t.source_id for t in fills if t.label == 2}) == 3    # drawn without repeats while they last
    # A class with no training images in the pool falls back to no guide.
    no_pool = allocate(HARD, 12, 0, 0, "balanced", NAMES, 2, "train", [p for p in POOL if p[1] != 2])
    assert {t.source_id for t in no_pool if t.label == 2} == {""}


def test_mixed_spends_a_share_on_uniform_classes():
    plan = make_plan(HARD, 8, 3, 1, 1, mode="actgen", class_names=NAMES, allocation="mixed", random_fraction=0.5)
    roles = Counter(s.role for s in plan.samples)
    assert roles == {"random": 4, "hard": 4}
    assert Counter(s.label for s in plan.samples if s.role == "random") == {0: 1, 1: 1, 2: 1, 3: 1}
    assert all(s.mode == "txt2img" and s.source_id == "" for s in plan.samples if s.role == "random")
    hard = [s.source_id for s in plan.samples if s.role == "hard"]
    assert len(set(hard)) == 4                                # the paper rule: distinct mistakes


def test_plan_stats_describe_the_spread():
    plan = make_plan(HARD[:2], 6, 0, 0, 2, mode="img2img", class_names=NAMES)
    stats = plan_stats(plan, NAMES)
    assert stats["per_class"] == {"zero": 3, "one": 0, "two": 0, "three": 3}
    assert stats["distinct_guides"] == 2 and stats["renders_per_guide_max"] == 3
    assert stats["renders_per_guide_mean"] == 3.0 and stats["roles"] == {"hard": 6}


def test_allocation_config_checks_values():
    assert AllocationConfig().policy == "balanced"          # the study's rule chose it (docs/study.md)
    with pytest.raises(ValueError, match="allocation.random_fraction"):
        AllocationConfig(policy="mixed", random_fraction=1.5)
