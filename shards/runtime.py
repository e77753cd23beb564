"""Process-level helpers every ActGen program shares: logging set-up and device choice.

They live in the contract package because it is the one package all programs import; neither
helper imports torch at module level, so a CLI's ``--help`` stays torch-free.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

# Libraries that log at INFO about things a user of ActGen never needs to see.
_NOISY = ("PIL", "datasets", "fsspec", "urllib3", "filelock", "timm", "diffusers", "transformers", "ray",
          "ray.data", "matplotlib", "huggingface_hub", "httpx")


def setup_logging(verbose: bool = False) -> None:
    """One logging format for every CLI, on stderr.

    Under ``torchrun`` (``RANK`` > 0) the other ranks log warnings only, tagged with their rank:
    rank 0 tells the story.
    """
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO if rank == 0 else logging.WARNING
    tag = f"[rank {rank}] " if rank else ""
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)


def resolve_device(preference: str, has_gpu: Optional[bool] = None, key: str = "device") -> str:
    """``auto`` -> ``cuda`` when a GPU is available, else ``cpu``.

    Args:
        preference: ``auto``, ``cpu`` or ``cuda``.
        has_gpu: whether the process (or the Ray cluster) that will run the work has a GPU;
            None asks torch about this process.
        key: the config key, for the error.

    Raises:
        RuntimeError: ``cuda`` was asked for and no GPU is available.
        ValueError: an unknown preference.
    """
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"config key {key!r} = {preference!r}: expected 'auto', 'cpu' or 'cuda'")
    if preference == "cpu":
        return "cpu"
    if has_gpu is None:
        import torch

        has_gpu = torch.cuda.is_available()
    if preference == "cuda" and not has_gpu:
        raise RuntimeError(f"config key {key!r} = 'cuda': no CUDA device is available")
    return "cuda" if has_gpu else "cpu"
