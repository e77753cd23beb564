"""Reading one training or evaluation image: a failure is one :class:`SampleError` line."""
from __future__ import annotations

from typing import Callable


class SampleError(ValueError):
    """A training or evaluation image that cannot be loaded: one line naming the file and the
    sample id (bad input, exit 2).

    It keeps that line when it crosses a DataLoader worker: torch re-raises a worker's exception
    as ``type(e)("Caught SampleError in DataLoader worker process N.\nOriginal Traceback ...")``,
    and the constructor takes the original line back out of that text.
    """

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        if message.startswith(f"Caught {type(self).__name__}") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def _load(read: Callable, index: int):
    """``read(index)``, a FormatError (undecodable, missing, oversized image) as SampleError."""
    from actgen.shards.errors import FormatError

    try:
        return read(index)
    except FormatError as e:
        raise SampleError(str(e)) from None
