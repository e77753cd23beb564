"""How a fit reports progress: a tqdm bar on a terminal, otherwise one log line per interval.

The line has a fixed format: the step, the last loss with the interval's mean in parentheses,
the learning rate, steps and images per second, and the share of the interval spent waiting for
decoded images, which says whether a streamed fit is input-bound (then raise ``num_workers``).
"""
from __future__ import annotations

import logging
import time

_logger = logging.getLogger(__name__)


def progress_bar(enabled: bool, initial: int, total: int, desc: str = "fit"):
    """A tqdm bar on a terminal only (None otherwise: in a log file, the fit's own line every
    ``log_every`` steps is the progress)."""
    from actgen.shards.runtime import progress_bars

    if not enabled or not progress_bars():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


class IntervalLog:
    """Collects the steps since the last line; :meth:`line` logs them and starts a new interval.

    Args:
        name: the line's prefix (e.g. ``lora step``).
        total: the fit's steps.
        images_per_step: for the images-per-second figure.
        logger: where the line goes.
    """

    def __init__(self, name: str, total: int, images_per_step: int, logger: logging.Logger = _logger):
        self.name, self.total, self.images_per_step, self.logger = name, total, images_per_step, logger
        self._start, self._losses, self._data_seconds = time.time(), [], 0.0

    def add(self, loss: float, data_seconds: float) -> None:
        """One step done: its loss and the seconds it waited for data."""
        self._losses.append(loss)
        self._data_seconds += data_seconds

    def line(self, step: int, lr: float) -> None:
        if not self._losses:
            return
        dt = max(time.time() - self._start, 1e-9)
        n = len(self._losses)
        self.logger.info("%s %d/%d  loss %.4f (%.4f)  lr %.2e  %.2f it/s  %.1f img/s  data %.0f%%",
                         self.name, step, self.total, self._losses[-1], sum(self._losses) / n, lr, n / dt,
                         n * self.images_per_step / dt, 100 * min(1.0, self._data_seconds / dt))
        self._start, self._losses, self._data_seconds = time.time(), [], 0.0
