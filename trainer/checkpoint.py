"""``<run>/last.pt``: everything needed to continue a run exactly where it stopped.

Holds the next epoch (or, written on SIGTERM at a step boundary, the epoch in progress and how
far it got: ``in_epoch``), model, optimizer, LR scheduler, EMA and grad-scaler states, every rank's
python/numpy/torch(/CUDA) RNG states, the synthetic pool, the rounds written, and cumulative
counters. The sampler needs no state: its order is a function of (seed, epoch). Written
atomically, and loaded with ``weights_only=True`` (no pickled code).
"""
from __future__ import annotations

import contextlib
import io
import logging
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from actgen.shards.atomic import atomic_write_bytes
from actgen.shards.errors import FormatError, WriteFailed, load_refusal, one_line, writing

_logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
CHECKPOINT_FORMAT = "actgen.trainer-checkpoint"
CHECKPOINT_VERSION = 2
"""2 adds ``in_epoch`` (a checkpoint written at a step boundary on SIGTERM); 1 is read too."""
READABLE_VERSIONS = (1, 2)
REQUIRED_KEYS = ("format", "format_version", "epoch", "model", "loop", "rng", "pool", "rounds_done",
                 "synthetic_seen_total", "dataset_fingerprint", "class_names")


def capture_rng() -> dict[str, Any]:
    """This process's RNG states, as tensors and plain values (``weights_only``-loadable)."""
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, torch.tensor(mt_state, dtype=torch.int64), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt_state.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def writing_weights(path: str | Path) -> Iterator[None]:
    """``shards.errors.writing`` for a safetensors file: safetensors reports a full disk or a
    file-size limit with its own error type, which names no file; both become ``WriteFailed``
    naming ``path`` (a runtime failure, exit 1)."""
    with writing(path):
        try:
            yield
        except Exception as e:
            if type(e).__name__ != "SafetensorError":
                raise
            raise WriteFailed(f"{path}: cannot write ({one_line(e)})") from e


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (format fields added); ``WriteFailed`` naming ``path`` on a full disk."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **state}, buffer)
    with writing(path):
        atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        FormatError: unreadable, or not a trainer checkpoint of this version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle errors...: the file is the problem
        raise FormatError(str(path), load_refusal(e, "checkpoint")) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise FormatError(str(path), f"not an {CHECKPOINT_FORMAT} file")
    if state.get("format_version") not in READABLE_VERSIONS:
        raise FormatError(str(path), f"format_version {state.get('format_version')!r}, expected one of "
                                     f"{list(READABLE_VERSIONS)}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise FormatError(str(path), f"missing fields {missing}")
    _check_in_epoch(path, state.get("in_epoch"))
    return state


def _check_in_epoch(path: Path, value: Any) -> None:
    """``in_epoch``: null, or where a preempted epoch stopped: ``batches_done`` (>= 1) by each of
    ``world_size`` processes, and ``carry``, each process's five sums of the epoch so far."""
    if value is None:
        return
    ok = (isinstance(value, dict) and set(value) == {"batches_done", "world_size", "carry"}
          and all(isinstance(value[k], int) and not isinstance(value[k], bool) and value[k] >= 1
                  for k in ("batches_done", "world_size"))
          and isinstance(value["carry"], (list, tuple)) and len(value["carry"]) == value["world_size"]
          and all(isinstance(rank, (list, tuple)) and len(rank) == 5
                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in rank)
                  for rank in value["carry"]))
    if not ok:
        raise FormatError(str(path), f"field 'in_epoch' = {repr(value)[:200]}: expected null or {{batches_done: int >= 1, "
                                     "world_size: int >= 1, carry: world_size lists of 5 finite numbers}")
