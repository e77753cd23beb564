"""Loading a generator from a local folder or a hub id: :func:`load_pretrained` reads the
folder's ``unet/config.json`` and loads it as Stable Diffusion 1.x/2.x
(:class:`~.generator.DiffusersGenerator`) or SDXL (:class:`~.generator_sdxl.SDXLGenerator`). What
their ``from_pretrained`` share is in :mod:`.pretrained`, which imports neither, so the three
modules import each other in one direction only.
"""
from __future__ import annotations

from .generator import DiffusersGenerator
from .generator_sdxl import SDXLGenerator
from .pretrained import PretrainedSource, pretrained_family  # noqa: F401  (re-exported)


def load_pretrained(path_or_id: str, *, device: str | None = None, dtype: str | None = None,
                    attention_resolution: int | None = None, local_files_only: bool = False) -> DiffusersGenerator:
    """:meth:`DiffusersGenerator.from_pretrained` or :meth:`SDXLGenerator.from_pretrained
    <.generator_sdxl.SDXLGenerator.from_pretrained>`, as the UNet's config says (``unet_family``)."""
    family = pretrained_family(path_or_id, local_files_only)
    cls = SDXLGenerator if family == "sdxl" else DiffusersGenerator
    return cls.from_pretrained(path_or_id, device=device, dtype=dtype, attention_resolution=attention_resolution,
                               local_files_only=local_files_only)
