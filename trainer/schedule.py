"""The active schedule, as pure arithmetic on 0-indexed epochs (no I/O).

Paper: with E epochs, a round ends after every epoch e < int(0.5 E); the
images generated from that round's hard samples join training from epoch e + 1 on; the held-out
split is merged back at epoch int(0.5 E). Here a round spans ``every`` epochs, and the horizon
and merge epoch are configurable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .config import RoundsConfig


@dataclass(frozen=True)
class RoundSchedule:
    """Resolved round schedule.

    Attributes:
        epochs: total epochs.
        every: epochs per round.
        horizon: rounds end only after epochs below this one.
        merge_epoch: the hold-out joins training at the start of this epoch (``epochs`` = never).
        enabled: whether rounds happen at all.
    """

    epochs: int
    every: int
    horizon: int
    merge_epoch: int
    enabled: bool = True

    @classmethod
    def from_config(cls, rounds: RoundsConfig, epochs: int) -> "RoundSchedule":
        horizon, merge_epoch = rounds.resolve(epochs)
        return cls(epochs=epochs, every=rounds.every, horizon=horizon, merge_epoch=merge_epoch,
                   enabled=rounds.enabled)

    @property
    def num_rounds(self) -> int:
        """Rounds r with ``end_epoch(r) < horizon``."""
        return self.horizon // self.every if self.enabled else 0

    def end_epoch(self, round: int) -> int:
        """The epoch after which round ``round`` ends (hard samples + checkpoint written)."""
        return (round + 1) * self.every - 1

    def consume_epoch(self, round: int) -> int:
        """The first epoch that trains on round ``round``'s synthetic images."""
        return self.end_epoch(round) + 1

    def round_ending_at(self, epoch: int) -> Optional[int]:
        """The round that ends after ``epoch``, or None."""
        if not self.enabled or epoch >= self.horizon or (epoch + 1) % self.every:
            return None
        return (epoch + 1) // self.every - 1

    def rounds_consumed_at(self, epoch: int) -> list[int]:
        """Rounds whose data sets are due at the start of ``epoch`` (on time, not late ones)."""
        return [r for r in range(self.num_rounds) if self.consume_epoch(r) == epoch]

    def rounds_due_by(self, epoch: int) -> list[int]:
        """Every round whose data set should be in training by the start of ``epoch``."""
        return [r for r in range(self.num_rounds) if self.consume_epoch(r) <= epoch]

    def holdout_merged(self, epoch: int) -> bool:
        """Whether ``epoch`` trains on the hold-out too."""
        return epoch >= self.merge_epoch

    def holdout_evaluated(self, epoch: int) -> bool:
        """Whether the hold-out is still held out (and so evaluated) after ``epoch``."""
        return epoch < self.merge_epoch

    def describe(self) -> str:
        if not self.enabled:
            return f"no rounds; hold-out merged at epoch {self.merge_epoch} of {self.epochs}"
        return (f"{self.num_rounds} rounds of {self.every} epoch(s), ending after epochs "
                f"{self.end_epoch(0)}..{self.end_epoch(max(self.num_rounds - 1, 0))}; hold-out merged at "
                f"epoch {self.merge_epoch} of {self.epochs}")
