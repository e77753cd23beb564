"""Hard-sample manifest: the hard held-out samples of one round (by default every top-1 mistake), plus a header.

One JSON file (``hard_samples.json``), written atomically.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import __version__
from ._schema import check_format, dumps, from_jsonable, read_json_file, utc_now
from .atomic import atomic_write_text
from .errors import FormatError

MANIFEST_FORMAT = "actgen.hard-samples"
MANIFEST_FORMAT_VERSION = 2
"""The newest version this code reads and writes. Version 2 added ``header.searched``; a
manifest that searched the hold-out (the paper) is still written as version 1, so that readers
from before version 2 take it."""
SEARCHED = ("holdout", "train")
MANIFEST_FILE = "hard_samples.json"


@dataclass(frozen=True)
class HardSample:
    id: str             # stable sample id in the data set (see sources.sample_id)
    label: int          # true label
    class_name: str
    predicted: int      # top-1 prediction
    prob_true: float    # softmax probability of the true class
    loss: float         # cross-entropy of the true class


@dataclass(frozen=True)
class ManifestHeader:
    dataset: dict               # the DataSource as a dict (path, split, columns, class_names)
    dataset_fingerprint: str
    class_names: list[str]
    split_seed: int
    holdout_fraction: float
    num_evaluated: int          # size of the hold-out that was evaluated
    checkpoint_sha256: str      # sha256 of the bundle's model.safetensors
    round: int
    epoch: int
    # Rounds the run's schedule has in all; the builder's per-round schedules need it. Optional so
    # that manifests written before it existed still read.
    num_rounds: Optional[int] = None
    # How the samples were selected (the trainer's rounds.selection: rule, k, fraction,
    # drop_hardest, start_epoch, min_holdout_acc) and whether the round fired (fired, reason,
    # num_candidates). Empty in manifests written before it existed: the paper's rule, fired.
    selection: dict = field(default_factory=dict)
    # Training-split images (sample ids) the builder may use as guides where a class-balanced
    # allocation has more images for a class than hard samples (``allocation.fill: train``): a
    # bounded random draw per class, never hold-out images. Empty in older manifests.
    guide_pool: list[str] = field(default_factory=list)
    # Which split the round searched (version 2): ``holdout`` (the paper; images kept out of
    # training) or ``train`` (the training images themselves: nothing withheld, holdout_fraction
    # may be 0).
    searched: str = "holdout"
    format: str = MANIFEST_FORMAT
    format_version: int = 1
    tool_version: str = ""
    created: str = ""


@dataclass(frozen=True)
class HardSampleManifest:
    header: ManifestHeader
    samples: list[HardSample] = field(default_factory=list)


def _check(manifest: HardSampleManifest, where: str) -> None:
    """Rules across fields: ids, labels and names agree with the header."""
    from .sources import parse_sample_id

    header = manifest.header
    names = header.class_names
    if not names or len(set(names)) != len(names):
        raise FormatError(where, f"field 'header.class_names' must be non-empty and unique, got {names}")
    if header.searched not in SEARCHED:
        raise FormatError(where, f"field 'header.searched' must be one of {list(SEARCHED)}, got {header.searched!r}")
    if header.searched != "holdout" and header.format_version < 2:
        raise FormatError(where, f"field 'header.searched' is {header.searched!r}, which needs format_version 2, "
                                 f"got {header.format_version}")
    low_ok = header.searched == "train" and header.holdout_fraction == 0.0
    if not (0.0 < header.holdout_fraction < 1.0 or low_ok):
        raise FormatError(where, f"field 'header.holdout_fraction' must be in (0, 1) (or 0 when 'header.searched' "
                                 f"is 'train'), got {header.holdout_fraction}")
    if header.num_evaluated < len(manifest.samples):
        raise FormatError(where, f"field 'header.num_evaluated' ({header.num_evaluated}) is smaller than the "
                                 f"number of hard samples ({len(manifest.samples)})")
    if header.num_rounds is not None and not header.round < header.num_rounds:
        raise FormatError(where, f"field 'header.num_rounds' ({header.num_rounds}) must exceed "
                                 f"'header.round' ({header.round})")
    if header.selection.get("fired") is False and manifest.samples:
        raise FormatError(where, f"field 'header.selection.fired' is false (the round did not fire), but the "
                                 f"manifest lists {len(manifest.samples)} samples")
    fp12 = header.dataset_fingerprint[:12]
    hard_ids = {s.id for s in manifest.samples}
    pool_seen: set[str] = set()
    for i, sid in enumerate(header.guide_pool):
        at = f"header.guide_pool[{i}]"
        try:
            got_fp, _ = parse_sample_id(sid)
        except FormatError as e:
            raise FormatError(where, f"field '{at}': {e.problem}, got {sid!r}") from None
        if got_fp != fp12:
            raise FormatError(where, f"field '{at}' {sid!r} does not belong to data set {fp12} "
                                     "(header.dataset_fingerprint)")
        if sid in pool_seen or sid in hard_ids:
            raise FormatError(where, f"field '{at}' {sid!r} repeats an id of the guide pool or the samples")
        pool_seen.add(sid)
    seen: dict[str, int] = {}
    for i, s in enumerate(manifest.samples):
        at = f"samples[{i}]"
        try:
            got_fp, _ = parse_sample_id(s.id)
        except FormatError as e:
            raise FormatError(where, f"field '{at}.id': {e.problem}, got {s.id!r}") from None
        if got_fp != fp12:
            raise FormatError(where, f"field '{at}.id' {s.id!r} does not belong to data set {fp12} "
                                     "(header.dataset_fingerprint)")
        if s.id in seen:
            raise FormatError(where, f"field '{at}.id' {s.id!r} repeats samples[{seen[s.id]}]")
        seen[s.id] = i
        for name in ("label", "predicted"):
            value = getattr(s, name)
            if not 0 <= value < len(names):
                raise FormatError(where, f"field '{at}.{name}' must be in 0..{len(names) - 1}, got {value}")
        if s.class_name != names[s.label]:
            raise FormatError(where, f"field '{at}.class_name' is {s.class_name!r} but label {s.label} "
                                     f"is {names[s.label]!r}")
        if not 0.0 <= s.prob_true <= 1.0:
            raise FormatError(where, f"field '{at}.prob_true' must be in [0, 1], got {s.prob_true}")
        if not (math.isfinite(s.loss) and s.loss >= 0.0):
            raise FormatError(where, f"field '{at}.loss' must be finite and >= 0, got {s.loss}")


def write_manifest(path: str | Path, manifest: HardSampleManifest) -> None:
    """Validate and write ``manifest`` atomically as JSON.

    An empty ``header.created``/``header.tool_version`` is filled with the current UTC time/actgen
    version. ValueError (a FormatError naming ``path``) if the manifest breaks a rule of the format.
    """
    header = manifest.header
    header = dataclasses.replace(header, created=header.created or utc_now(),
                                 tool_version=header.tool_version or __version__,
                                 format_version=manifest_version(header.searched))
    manifest = dataclasses.replace(manifest, header=header)
    if header.format != MANIFEST_FORMAT:
        raise ValueError(f"write_manifest: format must be {MANIFEST_FORMAT!r}, got {header.format!r}")
    _check(manifest, str(path))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(dumps(manifest))
    if header.format_version == 1:
        del data["header"]["searched"]    # not in version 1: older readers take the file
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def manifest_version(searched: str) -> int:
    """The version a manifest is written at: 1 unless it needs a field of version 2."""
    return 1 if searched == "holdout" else 2


def read_manifest(path: str | Path) -> HardSampleManifest:
    """FormatError naming the file and the field on anything malformed."""
    where = str(path)
    data = read_json_file(path)
    if isinstance(data, dict) and isinstance(data.get("header"), dict):
        check_format(where, data["header"], MANIFEST_FORMAT, MANIFEST_FORMAT_VERSION, prefix="header")
    manifest = from_jsonable(HardSampleManifest, data, where)
    _check(manifest, where)
    return manifest
