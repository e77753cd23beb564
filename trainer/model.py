"""The classifier: a timm model by name, optionally started from local weights."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from actgen.shards.errors import FormatError, load_refusal

from .config import ModelConfig

_logger = logging.getLogger(__name__)


MAX_MODEL_CONFIG_BYTES = 1 << 20


def model_folder(cfg: ModelConfig) -> Optional[Path]:
    """The local folder a ``local-dir:PATH`` or ``hf-hub:ORG/NAME[@REV]`` model name stands for
    (timm's ``config.json`` and weights); None for a timm architecture name. A hub name is taken
    from the local Hugging Face cache, downloaded only with ``model.allow_download``."""
    name = cfg.name
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):]).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: no config.json (config key 'model.name' = {name!r}: a local-dir: "
                                    "folder holds timm's config.json and the weights, as a run's final/ does)")
        return folder
    if name.startswith("hf-hub:"):
        from huggingface_hub import snapshot_download

        repo, _, revision = name[len("hf-hub:"):].partition("@")
        try:
            return Path(snapshot_download(repo, revision=revision or None, local_files_only=not cfg.allow_download,
                                          allow_patterns=["config.json", "*.safetensors", "pytorch_model.bin"]))
        except Exception as e:      # not cached (offline), unknown repository, no network
            fix = ("download it once (hf download " + repo + ") or set model.allow_download=true"
                   if not cfg.allow_download else "check the name and the network")
            raise ValueError(f"config key 'model.name' = {name!r}: not found ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]}); {fix}") from None
    return None


def model_identity(cfg: ModelConfig) -> tuple[str, dict]:
    """``(architecture, kwargs)``: the timm architecture and ``create_model`` keyword arguments
    (besides ``num_classes``) a bundle records, so that the builder rebuilds the same model
    without the folder or hub name it came from. Dropout is training-only and left out."""
    folder = model_folder(cfg)
    return (cfg.name, dict(cfg.kwargs)) if folder is None else _folder_identity(folder, cfg)


def _folder_identity(folder: Path, cfg: ModelConfig) -> tuple[str, dict]:
    """:func:`model_identity` of a ``local-dir:``/``hf-hub:`` model whose folder is ``folder``:
    its ``config.json`` read (bounded) and checked."""
    path = folder / "config.json"
    from actgen.shards._schema import load_json

    if path.stat().st_size > MAX_MODEL_CONFIG_BYTES:
        raise FormatError(str(path), f"larger than {MAX_MODEL_CONFIG_BYTES} bytes: not a timm config")
    config = load_json(path.read_bytes(), str(path))
    architecture = config.get("architecture") if isinstance(config, dict) else None
    args = config.get("model_args", {}) if isinstance(config, dict) else None
    if not isinstance(architecture, str) or not architecture or not isinstance(args, dict):
        raise FormatError(str(path), "expected a timm config: 'architecture' a model name and 'model_args' an "
                                     "object (or absent)")
    # A folder from elsewhere shapes the architecture; it never points timm at other files.
    from actgen.shards.bundle import check_model_kwargs

    check_model_kwargs(args, str(path), "model_args")
    return architecture, {**args, **dict(cfg.kwargs)}


def create_model(cfg: ModelConfig, num_classes: int, class_names: Optional[list[str]] = None) -> nn.Module:
    """``timm.create_model(cfg.name, num_classes=..., **cfg.kwargs)`` (with timm's pretrained
    weights when ``cfg.pretrained``), then ``cfg.initial_weights``.

    Raises:
        ValueError: unknown timm model name, or kwargs the model does not accept.
        FileNotFoundError: ``initial_weights`` does not exist.
        FormatError: weights that do not fit the model (other classes, other architecture).
    """
    import timm

    folder = model_folder(cfg)
    if folder is not None:
        identity = _folder_identity(folder, cfg)     # its config.json checked before timm reads it
        name = f"local-dir:{folder}"
        if cfg.pretrained_file:
            raise ValueError(f"config key 'model.pretrained_file' = {cfg.pretrained_file!r}: model.name "
                             f"{cfg.name!r} brings its own weights; set one of the two")
    elif not timm.is_model(cfg.name):
        close = timm.list_models(f"*{cfg.name.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ValueError(f"config key 'model.name' = {cfg.name!r}: not a timm model{hint}")
    else:
        name = cfg.name
    pretrained = {}
    if cfg.pretrained:
        pretrained = {"pretrained": True}        # a folder or hub name: its own weights
        if folder is None and cfg.pretrained_file:
            path = Path(cfg.pretrained_file)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not a file (config key 'model.pretrained_file')")
            pretrained["pretrained_cfg_overlay"] = {"file": str(path)}
        elif folder is None and not cfg.allow_download:
            raise ValueError(f"config key 'model.pretrained' = true with no model.pretrained_file would download "
                             f"timm's weights for {cfg.name!r}: set model.pretrained_file to a local file, or "
                             "model.allow_download=true")
    try:
        model = timm.create_model(name, num_classes=num_classes, drop_rate=cfg.drop_rate,
                                  drop_path_rate=cfg.drop_path_rate, **{"pretrained": False, **pretrained},
                                  **dict(cfg.kwargs))
    except TypeError as e:
        raise ValueError(f"config key 'model.kwargs' = {dict(cfg.kwargs)!r}: rejected by {cfg.name} ({e})") from None
    except Exception as e:   # timm's loader: junk bytes, or other keys or shapes than the architecture's
        if cfg.pretrained_file:
            raise FormatError(cfg.pretrained_file, weights_problem(e, cfg.name)) from None
        if folder is not None and cfg.pretrained:
            raise FormatError(str(folder), weights_problem(e, identity[0])) from None
        raise
    if cfg.pretrained:
        _logger.info("model %s started from pretrained weights (%s)", cfg.name,
                     cfg.pretrained_file or (folder if folder is not None else "timm's default"))
    if cfg.initial_weights:
        load_initial_weights(model, cfg.initial_weights, class_names, skip_head=cfg.skip_head)
    return model


def load_initial_weights(model: nn.Module, path: str | Path, class_names: Optional[list[str]] = None,
                         skip_head: bool = False) -> None:
    """Load a bundle directory, a ``.safetensors`` file or a torch state dict into ``model``.

    A bundle's class names must equal ``class_names`` (unless ``skip_head``); plain state dicts
    must match every key and shape (apart from the head with ``skip_head``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: initial weights not found (config key 'model.initial_weights')")
    if path.is_dir():
        from actgen.shards.bundle import read_bundle_config

        bundle = read_bundle_config(path)
        if class_names is not None and not skip_head and list(bundle.class_names) != list(class_names):
            raise FormatError(str(path), f"checkpoint was trained on classes {list(bundle.class_names)}, this data "
                                         f"set has {list(class_names)} (set model.skip_head=true to fine-tune)")
        state = _read_state_dict(path / "model.safetensors")
        where = str(path / "model.safetensors")
    else:
        state = _read_state_dict(path)
        where = str(path)
    head = _head_keys(model)
    if skip_head:
        state = {k: v for k, v in state.items() if k not in head}
    own = model.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            what = "classifier head" if key in head else "tensor"
            raise FormatError(where, f"{what} '{key}' has shape {tuple(value.shape)}, the model expects "
                                     f"{tuple(own[key].shape)} (weights from another data set or architecture?)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (skip_head and k in head)]
    if missing or unexpected:
        raise FormatError(where, f"does not fit the model: missing {_few(missing)}, unexpected {_few(unexpected)}")
    _logger.info("initial weights loaded from %s%s", path, " (without head)" if skip_head else "")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: initial weights not found") from None
    except Exception as e:  # safetensors / pickle errors have many types; the file is the problem
        raise FormatError(str(path), load_refusal(e, "weights file")) from None
    for key in ("state_dict", "model", "state_dict_ema"):  # common checkpoint layouts (timm, ours)
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FormatError(str(path), "expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _head_keys(model: nn.Module) -> set[str]:
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier] if classifier else []
    return {k for k in model.state_dict() for n in names if k == n or k.startswith(n + ".")}


def _few(keys: list[str]) -> str:
    return "[]" if not keys else f"{keys[:4]}{' ...' if len(keys) > 4 else ''} ({len(keys)})"


def sync_batchnorm(model: nn.Module, enabled: bool, distributed: bool, device: torch.device) -> nn.Module:
    """``model`` with its BatchNorm layers synchronised over the processes (``train.sync_bn``;
    timm's ``convert_sync_batchnorm``, which knows timm's fused BN + activation layers). One process
    has nothing to synchronise; torch's SyncBatchNorm trains on GPUs only (ValueError on a CPU)."""
    if not enabled:
        return model
    if not distributed:
        _logger.info("train.sync_bn: one process, nothing to synchronise; BatchNorm left as it is")
        return model
    if device.type == "cpu":
        raise ValueError("config key 'train.sync_bn' = true: torch's SyncBatchNorm trains on GPUs only, and this "
                         "run's device is the CPU; set train.sync_bn=false")
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / torch.compile wrappers."""
    from timm.utils.model import unwrap_model

    return unwrap_model(model)


def export_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors (channels_last weights are not contiguous; safetensors needs them)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}


def recompute_bn_statistics(model: nn.Module, batches, device: torch.device) -> int:
    """Set every BatchNorm layer's running mean and variance to their averages over ``batches``
    (input tensors), the rest of the model in eval mode; -> the number of BN layers.

    A cumulative average (momentum None) over fixed, unaugmented images in a fixed order: the
    result is deterministic, the same on every rank given the same images.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for images in batches:
            model(images.to(device))
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(layers)


def weights_problem(error: Exception, architecture: str) -> str:
    """The project's one line for a weights file that does not load: what the file is and what
    was expected. A file that is not weights at all (torch's unpickler refusing it, a broken
    safetensors header) is said so, without the library's advice to load it unsafely."""
    text = " ".join(str(error).split())
    lowered = text.lower()
    if any(k in lowered for k in ("weights_only", "unpickl", "pickle", "invalid load key", "header",
                                  "safetensor", "zip archive", "magic number", "eof")):
        return ("not a weights file this trainer loads: expected a .safetensors file or a PyTorch state dict "
                "of tensors (anything that needs unpickling is never loaded)")
    return f"timm cannot load it into {architecture}: {text[:300]}"
