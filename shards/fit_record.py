"""Generator fit record: ``fit_record.json`` beside a generator that ``actgen-fit-generator`` made.

What the generator was fitted on (the data set's fingerprint and class names), the prompts, the
steps, seed and loss curve, the sha256 of the saved weights and the resolved config. The demo
reads it to decide whether a generator may be reused on a data set; benchmarks read the rest.
One JSON file, written atomically.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from ._schema import check_format, dumps, from_jsonable, read_json_file, utc_now
from .atomic import atomic_write_text
from .errors import FormatError

FIT_RECORD_FORMAT = "actgen.fit-record"
FIT_RECORD_FORMAT_VERSION = 1
FIT_RECORD_FILE = "fit_record.json"
METHODS = ("scratch", "lora")
_LEGACY_FORMAT = "actgen-fit-record/1"   # written before the format had a version field


@dataclass(frozen=True)
class FitData:
    """The labeled data set a generator was fitted on."""

    path: str                   # the DataSource path (e.g. builtin:digits, a directory, a hub id)
    fingerprint: str            # sources.LabeledImages.fingerprint
    num_images: int
    class_names: list[str]


@dataclass(frozen=True)
class FitRecord:
    """One fit: from scratch (``method="scratch"``) or a LoRA fine-tune (``method="lora"``).

    ``vocabulary``, ``builder_settings`` and ``autoencoder_losses`` are a fit from scratch's;
    ``base`` and ``adapter_parameters`` a LoRA fine-tune's; the other's stay at their defaults.
    """

    method: str                 # one of METHODS
    data: FitData
    prompts: list[str]          # prompt_template.format(name) per class, in class order
    prompt_template: str
    steps: int                  # optimizer steps (= len(losses))
    seed: int
    seconds: float              # wall time of the fit (of its last call, after a resume)
    weights_sha256: str         # DiffusersGenerator.weights_hash() of the saved generator
    losses: list[float]         # per-step training loss, rounded to 6 decimals
    config: dict                # the resolved fit config
    vocabulary: list[str] = field(default_factory=list)
    builder_settings: dict[str, Any] = field(default_factory=dict)   # actgen-build --set keys
    autoencoder_losses: list[float] = field(default_factory=list)
    base: str = ""              # the adapted generator
    adapter_parameters: int = 0
    format: str = FIT_RECORD_FORMAT
    format_version: int = 1
    tool_version: str = ""
    created: str = ""           # ISO-8601 UTC


def _check(record: FitRecord, where: str) -> None:
    """Rules across fields."""
    if record.method not in METHODS:
        raise FormatError(where, f"field 'method' must be one of {list(METHODS)}, got {record.method!r}")
    if len(record.prompts) != len(record.data.class_names):
        raise FormatError(where, f"field 'prompts' has {len(record.prompts)} prompts but data.class_names has "
                                 f"{len(record.data.class_names)} names")
    if record.steps != len(record.losses):
        raise FormatError(where, f"field 'steps' is {record.steps} but 'losses' has {len(record.losses)} values")


def write_fit_record(directory: str | Path, record: FitRecord) -> Path:
    """Validate and write ``<directory>/fit_record.json`` atomically; return its path.

    An empty ``created``/``tool_version`` is filled with the current UTC time/actgen version.
    """
    path = Path(directory) / FIT_RECORD_FILE
    record = dataclasses.replace(record, created=record.created or utc_now(),
                                 tool_version=record.tool_version or __version__)
    if record.format != FIT_RECORD_FORMAT or record.format_version != FIT_RECORD_FORMAT_VERSION:
        raise ValueError(f"write_fit_record: format must be {FIT_RECORD_FORMAT!r} v{FIT_RECORD_FORMAT_VERSION}, "
                         f"got {record.format!r} v{record.format_version}")
    _check(record, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dumps(record))
    return path


def read_fit_record(directory: str | Path) -> FitRecord:
    """Parse and validate ``<directory>/fit_record.json``; FormatError naming the file and field."""
    path = Path(directory) / FIT_RECORD_FILE
    where = str(path)
    data = read_json_file(path)
    if isinstance(data, dict) and data.get("format") == _LEGACY_FORMAT and "format_version" not in data:
        # Records of generators fitted before the versioned format: the same fields, no method
        # for a fit from scratch.
        data = {**data, "format": FIT_RECORD_FORMAT, "format_version": 1, "method": data.get("method", "scratch")}
    check_format(where, data, FIT_RECORD_FORMAT, FIT_RECORD_FORMAT_VERSION)
    record = from_jsonable(FitRecord, data, where)
    _check(record, where)
    return record
