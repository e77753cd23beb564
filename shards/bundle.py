"""Classifier checkpoint bundle: ``model.safetensors`` + ``config.json`` in one directory.

Loadable with timm alone (``load_classifier``), so the builder never needs trainer code.
Written atomically: into a temporary sibling directory, then renamed into place.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import __version__
from ._schema import check_finite, check_format, dumps, from_jsonable, read_json_file, to_jsonable, utc_now
from .atomic import atomic_directory
from .errors import FormatError

_logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "actgen.classifier-bundle"
BUNDLE_FORMAT_VERSION = 2      # the newest this code reads; v2 adds timm's keys (final bundles)
TIMM_KEYS = ("label_names", "model_args", "pretrained_cfg")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class BundleConfig:
    architecture: str                       # timm model name
    num_classes: int
    class_names: list[str]
    input_size: tuple[int, int, int]         # (C, H, W), timm's pretrained_cfg convention
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str                      # "bilinear" | "bicubic" | ...
    dataset_fingerprint: str
    round: int
    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)
    model_kwargs: dict = field(default_factory=dict)   # extra timm.create_model kwargs (e.g. in_chans)
    crop_pct: float = 1.0                   # evaluation centre-crop share (timm); 1.0 = resize only; absent
                                            # in bundles written before it (they read as 1.0)
    # Version 2 only: timm's own keys, so that one config.json is also what
    # ``timm.create_model("local-dir:<bundle>")`` reads (a run's final/); they must agree with
    # class_names and model_kwargs, and pretrained_cfg may not point timm at any file or URL.
    label_names: Optional[list[str]] = None
    model_args: Optional[dict] = None
    pretrained_cfg: Optional[dict] = None
    format: str = BUNDLE_FORMAT
    format_version: int = 1
    tool_version: str = ""
    created: str = ""                       # ISO-8601 UTC


def _check_config(config: BundleConfig, where: str) -> None:
    """Cross-field rules that types alone cannot express."""
    if config.num_classes != len(config.class_names):
        raise FormatError(where, f"num_classes is {config.num_classes} but class_names has "
                                 f"{len(config.class_names)} names")
    if len(set(config.class_names)) != len(config.class_names):
        raise FormatError(where, f"class_names must be unique, got {config.class_names}")
    if any(v <= 0 for v in config.input_size):
        raise FormatError(where, f"input_size must be positive (C, H, W), got {list(config.input_size)}")
    if not 0.0 < config.crop_pct <= 1.0:
        raise FormatError(where, f"crop_pct must be in (0, 1], got {config.crop_pct}")
    if any(v <= 0 for v in config.std):
        raise FormatError(where, f"std must be positive, got {list(config.std)}")
    for name, value in config.metrics.items():
        check_finite(where, f"metrics.{name}", value)
    reserved = {"num_classes", "pretrained"} & set(config.model_kwargs)
    if reserved:
        raise FormatError(where, f"model_kwargs must not set {sorted(reserved)} (the bundle fixes them)")
    check_model_kwargs(config.model_kwargs, where, "model_kwargs")
    timm_keys = [k for k in TIMM_KEYS if getattr(config, k) is not None]
    if timm_keys and config.format_version < 2:
        raise FormatError(where, f"fields {timm_keys} need format_version 2, got {config.format_version}")
    if config.label_names is not None and config.label_names != config.class_names:
        raise FormatError(where, "label_names must equal class_names")
    if config.model_args is not None and config.model_args != config.model_kwargs:
        raise FormatError(where, "model_args must equal model_kwargs")
    if config.pretrained_cfg is not None:
        check_model_kwargs(config.pretrained_cfg, where, "pretrained_cfg")


LOADING_KWARGS = frozenset({"checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict",
                            "cache_dir", "file", "url", "hf_hub_id", "hf_hub_filename", "state_dict", "weights"})
"""``timm.create_model`` keyword arguments that make it read a file or fetch one (``checkpoint_path``
is ``torch.load``-ed, possibly unpickling code). A bundle carries its weights in
``model.safetensors``; its ``model_kwargs`` only shape the architecture."""


def check_model_kwargs(kwargs: dict, where: str, field: str) -> None:
    """FormatError naming ``field.<key>`` for any key that would load, fetch or point at a file."""
    for key, value in kwargs.items():
        lowered = str(key).lower()
        if (lowered in LOADING_KWARGS or lowered.startswith(("pretrained_cfg", "hf_hub", "checkpoint"))
                or lowered.endswith(("_path", "_file", "_url", "_dir")) or lowered in ("path", "filename")):
            raise FormatError(where, f"field '{field}.{key}' = {value!r}: not allowed (a bundle's weights are its "
                                     f"{WEIGHTS_FILE}; model_kwargs may only shape the architecture, never make "
                                     "timm read, fetch or configure weights from elsewhere)")


def write_bundle(directory: str | Path, state_dict: dict, config: BundleConfig) -> str:
    """Write the bundle atomically; return the sha256 of ``model.safetensors``.

    An empty ``created``/``tool_version`` is filled with the current UTC time/actgen version.
    An existing bundle at ``directory`` is replaced as a whole.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    # Version 1 unless timm's keys are there: readers of version 1 keep reading round bundles.
    version = 2 if any(getattr(config, k) is not None for k in TIMM_KEYS) else 1
    config = dataclasses.replace(config, created=config.created or utc_now(),
                                 tool_version=config.tool_version or __version__, format_version=version)
    if config.format != BUNDLE_FORMAT:
        raise ValueError(f"write_bundle: format must be {BUNDLE_FORMAT!r}, got {config.format!r}")
    _check_config(config, str(directory / CONFIG_FILE))
    record = to_jsonable(config)
    for key in TIMM_KEYS:
        if record[key] is None:
            del record[key]
    # Own, contiguous CPU copies: safetensors refuses tensors that share storage.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    with atomic_directory(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(dumps(record), encoding="utf-8")
        digest = bundle_sha256(tmp)
    _logger.info("wrote bundle %s (%s, %d tensors, sha256 %s)", directory, config.architecture,
                 len(tensors), digest[:12])
    return digest


def read_bundle_config(directory: str | Path) -> BundleConfig:
    """Parse and validate ``config.json``; FormatError naming the file and field."""
    path = Path(directory) / CONFIG_FILE
    where = str(path)
    data = read_json_file(path)
    check_format(where, data, BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION)
    config = from_jsonable(BundleConfig, data, where)
    _check_config(config, where)
    return config


def bundle_sha256(directory: str | Path) -> str:
    """sha256 of ``model.safetensors`` (what manifests and provenance record)."""
    path = Path(directory) / WEIGHTS_FILE
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        raise FormatError(str(path), "file not found") from None
    return h.hexdigest()


def load_classifier(directory: str | Path, device="cpu"):
    """-> ``(model in eval mode, BundleConfig)``, built with ``timm.create_model`` and strict load.

    The model's ``pretrained_cfg`` carries the bundle's input size, mean, std and interpolation, so
    ``timm.data.resolve_data_config(model=model)`` gives the evaluation transform it was trained with.
    """
    import timm
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_bundle_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise FormatError(str(weights), "file not found")
    where = str(Path(directory) / CONFIG_FILE)
    if not timm.is_model(config.architecture):
        raise FormatError(where, f"field 'architecture' = {config.architecture!r}: not a timm model "
                                 f"(timm {timm.__version__})")
    try:
        model = timm.create_model(config.architecture, pretrained=False, num_classes=config.num_classes,
                                  **config.model_kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:   # kwargs the model rejects
        raise FormatError(where, f"field 'model_kwargs' = {config.model_kwargs!r}: rejected by "
                                 f"{config.architecture} ({type(e).__name__}: {' '.join(str(e).split())})") from e
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as e:
        raise FormatError(str(weights), f"not a readable safetensors file ({e})") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise FormatError(str(weights), f"weights do not fit {config.architecture!r} with "
                                        f"{config.num_classes} classes and {config.model_kwargs}: {e}") from e
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}),
                            "input_size": tuple(config.input_size), "mean": tuple(config.mean),
                            "std": tuple(config.std), "interpolation": config.interpolation,
                            "crop_pct": config.crop_pct, "num_classes": config.num_classes}
    model.to(device).eval()
    return model, config
