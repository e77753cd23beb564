"""``<output>/checkpoints/last.pt``: everything a fit from scratch needs to continue exactly.

The step, the resolved config and the data set's fingerprint (a resume must match both), the
autoencoder, UNet and text-encoder weights, the EMA, the optimizer and LR-schedule states, the
fit's ``torch.Generator`` state (a uint8 tensor) and the loss curves. Only tensors and plain
values: it is loaded with ``weights_only=True``, so a crafted file cannot run pickled code.
Written atomically: a kill mid-write leaves the previous checkpoint.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from actgen.shards.atomic import atomic_write_bytes
from actgen.shards.config import diff_keys
from actgen.shards.errors import FormatError, load_refusal

REQUIRED_KEYS = ("step", "config", "fingerprint", "vae", "unet", "text_encoder", "ema", "optimizer",
                 "lr_scheduler", "rng", "losses", "ae_losses")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain values only) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without running pickled code.

    Raises:
        FormatError: unreadable, refused by the ``weights_only`` unpickler (a file holding
            anything but tensors and plain values), or a field is missing; one line, naming ``path``.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, a truncated zip...: the file is the problem
        raise FormatError(str(path), _refusal(e)) from None
    if not isinstance(state, dict):
        raise FormatError(str(path), f"not a fit checkpoint (a {type(state).__name__}, expected a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise FormatError(str(path), f"not a fit checkpoint (missing fields {missing})")
    return state


def _refusal(e: Exception) -> str:
    return load_refusal(e, "fit checkpoint")


def check_resume(state: dict[str, Any], config_dict: dict, fingerprint: str, path: Path) -> None:
    """ValueError unless ``state`` was written for this data set and this config."""
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"{path}: written for data set {state['fingerprint'][:12]}, data is {fingerprint[:12]}")
    if state["config"] != config_dict:
        keys = sorted(diff_keys(state["config"], config_dict))
        raise ValueError(f"{path}: written with another config (differs at {', '.join(keys)}); "
                         f"resume with the same config")
