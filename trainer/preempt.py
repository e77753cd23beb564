"""Preemption: a SIGTERM (how SLURM, Kubernetes and spot instances stop a job) that arrives while
an epoch trains stops the run at the next optimizer-step boundary, with a checkpoint there, so
that at most one step is lost instead of up to an epoch; ``--resume`` continues at that step.

Outside the batch loop (evaluation, a round's bundle, waiting for a data set) a SIGTERM stops the
run at once, as Ctrl-C does, and ``last.pt`` holds the last complete epoch. Processes of a
multi-process run agree on the step (one all-reduce of a flag every ``every`` steps, so that no
step waits on a host sync otherwise); a single process stops at the very next step.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

import torch

from actgen.shards.errors import Terminated

from .distributed import Runtime, all_reduce_sum


class Preemption:
    """The run's SIGTERM handler (main thread only; elsewhere signals never arrive).

    Use as a context manager around the epochs; :meth:`deferred` around each epoch's batch loop.
    """

    def __init__(self, rt: Runtime, every: int = 1):
        self.rt, self.every = rt, max(1, every)
        self.requested = False
        self._deferring = False
        self._previous: Optional[object] = None
        self._installed = False

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _on_sigterm(self, signum, frame) -> None:
        if self._deferring:
            self.requested = True       # acted on at the next step boundary
            return
        raise Terminated()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """While training an epoch: SIGTERM only sets :attr:`requested`."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def due(self, optimizer_steps: int) -> bool:
        """At a step boundary: whether every process stops here. One process: as soon as it was
        asked; several: at the first step, multiple of ``every``, after any of them was asked."""
        if not self.rt.distributed:
            return self.requested
        if optimizer_steps % self.every:
            return False
        return self.agreed()

    def agreed(self) -> bool:
        """Whether any process was asked to stop (every process must call it)."""
        if not self.rt.distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=self.rt.device)
        return bool(all_reduce_sum(flag, self.rt).item() > 0)
