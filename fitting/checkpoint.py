"""The fits' resumable checkpoints: everything a fit needs to continue exactly.

A fit from scratch keeps ``<output>/checkpoints/last.pt``: the step, the resolved config and the
data set's fingerprint (a resume must match both), the autoencoder, UNet and text-encoder weights,
the EMA, the optimizer and LR-schedule states, the fit's ``torch.Generator`` state (a uint8
tensor) and the loss curves. Only tensors and plain values: it is loaded with
``weights_only=True``, so a crafted file cannot run pickled code.

A LoRA fine-tune keeps ``<output>/checkpoints/lora.safetensors`` (:func:`save_tensor_checkpoint`):
one safetensors file, so nothing in it is ever unpickled. The adapter weights and the tensors of
the optimizer state are its tensors; the rest (step, config, fingerprint, losses, the optimizer's
and LR schedule's plain values) is JSON in the file's header metadata. One file, not a tensor
file beside a JSON file, so a kill between two writes cannot pair a new step with old weights.

Both are written atomically: a kill mid-write leaves the previous checkpoint.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

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


# -- safetensors checkpoints (LoRA) -------------------------------------------------------------

TENSOR_CHECKPOINT_FORMAT = "actgen.tensor-checkpoint"
_STATE_KEY = "actgen.state"


def save_tensor_checkpoint(path: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write ``tensors`` and ``state`` to one safetensors file, atomically.

    Args:
        path: the file.
        tensors: named tensors (stored under their names, on the CPU).
        state: nested dicts (str or int keys), lists, tuples (read back as lists), numbers, strings,
            None and tensors (e.g. an optimizer's ``state_dict()``): its tensors are stored as
            tensors ``state/<path>``, the rest as JSON in the header.
    """
    from safetensors.torch import save

    stored = {name: _cpu(t) for name, t in tensors.items()}
    tree = _encode(state, stored, "state")
    metadata = {"format": TENSOR_CHECKPOINT_FORMAT, _STATE_KEY: json.dumps(tree)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(stored, metadata=metadata))


def load_tensor_checkpoint(path: Path, required: Sequence[str] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a :func:`save_tensor_checkpoint` file -> ``(tensors, state)`` (``state``'s own tensors
    back in place, not in ``tensors``).

    Raises:
        FormatError: not a safetensors file (e.g. a pickle: it is never unpickled), not one of
            these checkpoints, or a ``required`` state field is missing; one line, naming ``path``.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            stored = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # SafetensorError (a bad header, a pickle...), OSError: the file is the problem
        raise FormatError(str(path), f"not a readable safetensors checkpoint ({type(e).__name__}: "
                                     f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if metadata.get("format") != TENSOR_CHECKPOINT_FORMAT or _STATE_KEY not in metadata:
        raise FormatError(str(path), f"not an actgen checkpoint (header metadata 'format' is "
                                     f"{metadata.get('format')!r}, expected {TENSOR_CHECKPOINT_FORMAT!r})")
    try:
        state = _decode(json.loads(metadata[_STATE_KEY]), stored)
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(str(path), f"unreadable checkpoint state ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise FormatError(str(path), f"checkpoint state is a {type(state).__name__}, expected an object")
    missing = [k for k in required if k not in state]
    if missing:
        raise FormatError(str(path), f"not a fit checkpoint (missing fields {missing})")
    tensors = {name: t for name, t in stored.items() if not name.startswith("state/")}
    return tensors, state


def _cpu(t: torch.Tensor) -> torch.Tensor:
    # safetensors wants contiguous tensors that share no storage with each other.
    return t.detach().to("cpu", copy=True).contiguous()


def _encode(value: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """JSON for ``value``, moving its tensors into ``tensors``. Objects are always wrappers:
    ``{"tensor": name}`` or ``{"dict": [[key, value], ...]}`` (pairs keep int keys ints)."""
    if isinstance(value, torch.Tensor):
        tensors[key] = _cpu(value)
        return {"tensor": key}
    if isinstance(value, dict):
        pairs = []
        for k, v in value.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint state {key}: key {k!r} is not a str or an int")
            pairs.append([k, _encode(v, tensors, f"{key}/{k}")])
        return {"dict": pairs}
    if isinstance(value, (list, tuple)):
        return [_encode(v, tensors, f"{key}/{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint state {key}: a {type(value).__name__} is neither a tensor nor a plain value")


def _decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {"tensor"}:
            return tensors[tree["tensor"]]
        if set(tree) == {"dict"}:
            return {k: _decode(v, tensors) for k, v in tree["dict"]}
        raise ValueError(f"unexpected object with keys {sorted(tree)}")
    if isinstance(tree, list):
        return [_decode(v, tensors) for v in tree]
    return tree
