"""What every generator's ``from_pretrained`` shares, apart from the generator classes (so that
they, and the loader that picks between them, import it without importing each other):
device and dtype, the checks of a local folder and its family, a component loader whose errors
name the component, the identity of a folder's files, and the bookkeeping after loading.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import Family, check_components, directory_family, unet_family

if TYPE_CHECKING:
    from .generator import DiffusersGenerator

_logger = logging.getLogger(__name__)


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
        check_device_dtype(dev, getattr(torch, dtype_name))
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

    def finish(self, generator: "DiffusersGenerator") -> "DiffusersGenerator":
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


def check_device_dtype(device: torch.device, dtype: torch.dtype) -> None:
    if device.type == "cpu" and dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype={dtype} on device={device}: the CPU runs float32 or bfloat16, not float16")


def files_identity(directory: Path) -> tuple:
    """Every file under ``directory`` as ``(relative path, size, mtime_ns, inode)``, sorted: a
    rewritten or replaced file changes it."""
    found = []
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            st = p.stat()
            found.append((p.relative_to(directory).as_posix(), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(found)
