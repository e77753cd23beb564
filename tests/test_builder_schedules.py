"""Per-round mode mixing (digest §1.3)."""
from __future__ import annotations

import numpy as np
import pytest

from actgen.builder.schedules import adversarial_probability, draw_modes, random_txt2img_share


def test_schedule_endpoints_and_shape():
    assert random_txt2img_share(0, 150) == 0.5 and adversarial_probability(0, 150) == 0.0
    assert random_txt2img_share(149, 150) == 0.0 and adversarial_probability(149, 150) == 0.5
    assert random_txt2img_share(300, 150) == 0.0 and adversarial_probability(300, 150) == 0.5   # held
    assert random_txt2img_share(2, 5) == pytest.approx(0.25) and adversarial_probability(2, 5) == pytest.approx(0.25)
    shares = [random_txt2img_share(r, 10) for r in range(10)]
    assert all(a > b for a, b in zip(shares, shares[1:]))
    for r in range(12):   # the paper's two draws: P(adv) = 0.5 - share while the share is positive
        assert adversarial_probability(r, 10) == pytest.approx(0.5 - random_txt2img_share(r, 10))


def test_schedule_rejects_bad_rounds():
    with pytest.raises(ValueError, match="horizon=1"):
        random_txt2img_share(0, 1)
    with pytest.raises(ValueError, match="round=-1"):
        adversarial_probability(-1, 10)


def test_draw_modes_is_seeded_and_follows_the_schedule():
    plan = draw_modes(4000, round=3, horizon=7, seed=42)
    again = draw_modes(4000, round=3, horizon=7, seed=42)
    assert np.array_equal(plan.modes, again.modes) and np.array_equal(plan.adversarial, again.adversarial)
    assert not np.array_equal(plan.modes, draw_modes(4000, round=4, horizon=7, seed=42).modes)
    assert set(plan.modes.tolist()) == {"txt2img", "actgen"}
    share = random_txt2img_share(3, 7)                                   # 0.25
    assert (plan.modes == "txt2img").mean() == pytest.approx(share, abs=0.03)
    guided = plan.modes != "txt2img"
    assert not plan.adversarial[~guided].any()
    assert plan.adversarial[guided].mean() == pytest.approx(adversarial_probability(3, 7), abs=0.03)

    start, end = draw_modes(500, 0, 7, seed=1), draw_modes(500, 6, 7, seed=1)
    assert not start.adversarial.any() and (end.modes == "actgen").all()
    assert (draw_modes(10, 6, 7, seed=1, guided_mode="img2img").modes == "img2img").all()
    with pytest.raises(ValueError, match="guided_mode='txt2img'"):
        draw_modes(10, 0, 7, seed=1, guided_mode="txt2img")
