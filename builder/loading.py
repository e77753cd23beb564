"""Loading a generator from a local folder or a hub id: which class, and what every loader shares.

:func:`load_pretrained` reads the folder's ``unet/config.json`` and loads it as Stable Diffusion
1.x/2.x (:class:`~.generator.DiffusersGenerator`) or SDXL
(:class:`~.generator_sdxl.SDXLGenerator`); :class:`PretrainedSource` is the part of their
``from_pretrained`` they share: device and dtype, the checks of a local folder, a component loader
whose errors name the component, and the bookkeeping after loading.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .config import Family, check_components, directory_family, unet_family
from .generator import DiffusersGenerator, _check_device_dtype, files_identity

_logger = logging.getLogger(__name__)


def load_pretrained(path_or_id: str, *, device: str | None = None, dtype: str | None = None,
                    attention_resolution: int | None = None, local_files_only: bool = False) -> DiffusersGenerator:
    """:meth:`DiffusersGenerator.from_pretrained` or :meth:`SDXLGenerator.from_pretrained
    <.generator_sdxl.SDXLGenerator.from_pretrained>`, as the UNet's config says (``unet_family``)."""
    family = pretrained_family(path_or_id, local_files_only)
    if family == "sdxl":
        from .generator_sdxl import SDXLGenerator

        cls = SDXLGenerator
    else:
        cls = DiffusersGenerator
    return cls.from_pretrained(path_or_id, device=device, dtype=dtype, attention_resolution=attention_resolution,
                               local_files_only=local_files_only)


def pretrained_family(path_or_id: str, local_files_only: bool = False) -> Family:
    """The family of a local directory or hub id, from its ``unet/config.json`` (only that file is read)."""
    local = Path(path_or_id)
    if local.is_dir():
        return directory_family(local)
    from diffusers import UNet2DConditionModel

    return unet_family(_component_loader(path_or_id, local_files_only)("unet", UNet2DConditionModel.load_config))


class PretrainedSource:
    """What every ``from_pretrained`` shares: the resolved device and dtype, the checks of a local
    directory, the component loader that names what failed, and the bookkeeping after loading.

    Use :meth:`open`, then :meth:`load` per component, then :meth:`finish` on the generator.
    """

    def __init__(self, path_or_id: str, device: torch.device, dtype_name: str, local_files_only: bool,
                 identity: tuple | None):
        self.path_or_id = path_or_id
        self.device = device
        self.dtype_name = dtype_name
        self.torch_dtype = getattr(torch, dtype_name)
        self.local_files_only = local_files_only
        self.identity = identity
        self.load = _component_loader(path_or_id, local_files_only)

    @classmethod
    def open(cls, path_or_id: str, device: str | None, dtype: str | None, local_files_only: bool, *,
             family: Family) -> PretrainedSource:
        """Resolve device and dtype, check a local directory's components and the family.

        Raises:
            ValueError: a bad dtype, float16 on the CPU, or a folder of another family.
            FileNotFoundError: a local directory lacks a component.
        """
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype_name = dtype or ("float16" if dev.type == "cuda" else "float32")
        if dtype_name not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"dtype={dtype_name!r}: expected 'float16', 'bfloat16' or 'float32'")
        _check_device_dtype(dev, getattr(torch, dtype_name))
        local = Path(path_or_id)
        identity = None
        if local.is_dir():
            check_components(local, key=None)
            # Taken before loading: files replaced during the load give a new identity next time.
            identity = (str(local.resolve()), dtype_name, files_identity(local))
        found = pretrained_family(path_or_id, local_files_only)
        if found != family:
            names = {"sd": "Stable Diffusion 1.x/2.x (DiffusersGenerator)", "sdxl": "SDXL (SDXLGenerator)"}
            raise ValueError(f"{path_or_id}: unet/config.json is {names[found]}'s, not {names[family]}'s "
                             "(addition_embed_type 'text_time' is SDXL's); load_pretrained picks the class")
        return cls(str(path_or_id), dev, dtype_name, local_files_only, identity)

    def finish(self, generator: DiffusersGenerator) -> DiffusersGenerator:
        generator._identity = self.identity
        _logger.info("loaded %s generator %s (%s on %s, %dx%d images, attention captured at %d on %d layers)",
                     generator.family, self.path_or_id, self.dtype_name, self.device, generator.image_size,
                     generator.image_size, generator.attention.resolution, len(generator.attention.layers))
        return generator


def _component_loader(path_or_id: str, local_files_only: bool):
    """``load(component, fn, **kw)``: ``fn(path_or_id, subfolder=component, ...)``, a failure named."""
    def load(comp, fn, **kw):
        try:
            return fn(str(path_or_id), subfolder=comp, local_files_only=local_files_only, **kw)
        except (OSError, ValueError) as e:
            raise RuntimeError(f"{path_or_id}: cannot load component '{comp}': {e}") from e
    return load
