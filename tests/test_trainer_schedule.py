"""The round schedule: which epochs end rounds, when their shards are used, the merge epoch."""
from __future__ import annotations

from actgen.trainer.config import RoundsConfig
from actgen.trainer.schedule import RoundSchedule


def test_paper_schedule_for_300_epochs():
    s = RoundSchedule.from_config(RoundsConfig(), epochs=300)
    assert (s.horizon, s.merge_epoch, s.num_rounds) == (150, 150, 150)
    # A round ends after every epoch 0..149 and its images are trained on from the next epoch.
    assert [s.round_ending_at(e) for e in (0, 1, 149, 150, 299)] == [0, 1, 149, None, None]
    assert s.consume_epoch(0) == 1 and s.consume_epoch(149) == 150
    assert s.rounds_consumed_at(0) == [] and s.rounds_consumed_at(1) == [0] and s.rounds_consumed_at(150) == [149]
    assert not s.holdout_merged(149) and s.holdout_merged(150)
    assert s.holdout_evaluated(149) and not s.holdout_evaluated(150)


def test_rounds_every_n_epochs_up_to_the_horizon():
    s = RoundSchedule.from_config(RoundsConfig(every=3, horizon=10, merge_epoch=12), epochs=20)
    ends = [e for e in range(20) if s.round_ending_at(e) is not None]
    assert ends == [2, 5, 8]  # epoch 11 would end round 3 but lies beyond the horizon
    assert [s.round_ending_at(e) for e in ends] == [0, 1, 2]
    assert s.num_rounds == 3 and [s.end_epoch(r) for r in range(3)] == ends
    assert {e: s.rounds_consumed_at(e) for e in range(20) if s.rounds_consumed_at(e)} == {3: [0], 6: [1], 9: [2]}
    assert s.rounds_due_by(7) == [0, 1] and s.rounds_due_by(2) == []
    assert s.merge_epoch == 12 and not s.holdout_merged(11) and s.holdout_merged(12)


def test_default_horizon_and_merge_are_half_of_an_odd_epoch_count():
    s = RoundSchedule.from_config(RoundsConfig(), epochs=7)
    assert (s.horizon, s.merge_epoch) == (3, 3)
    assert [s.round_ending_at(e) for e in range(7)] == [0, 1, 2, None, None, None, None]


def test_last_round_of_a_full_horizon_is_never_consumed():
    s = RoundSchedule.from_config(RoundsConfig(horizon=4, merge_epoch=4), epochs=4)
    assert s.num_rounds == 4 and s.consume_epoch(3) == 4  # == epochs: no epoch trains on it
    assert all(3 not in s.rounds_consumed_at(e) for e in range(4))


def test_disabled_rounds():
    s = RoundSchedule.from_config(RoundsConfig(enabled=False, merge_epoch=5), epochs=10)
    assert s.num_rounds == 0 and all(s.round_ending_at(e) is None for e in range(10))
    assert s.rounds_due_by(9) == [] and s.holdout_merged(5)
