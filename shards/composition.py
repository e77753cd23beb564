"""What a synthetic data set is made of: images per class, per mode and per role, and how
concentrated its guides are (renders per guide).

Read from the samples' provenance (``source_id``, ``guidance.mode``, ``role``), which a received
data set controls: every field is type-checked here and an unexpected value is counted under
``"?"`` rather than trusted. Used by the trainer (each round's pool entry, ``summary.json``) and by
``actgen-data info``.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

UNKNOWN = "?"


def _text(value: object) -> str:
    return value if isinstance(value, str) and len(value) <= 256 else UNKNOWN


def composition(provenances: Sequence[dict], labels: Sequence[int], class_names: Sequence[str]) -> dict:
    """``{images, per_class, modes, roles, distinct_guides, renders_per_guide_max,
    renders_per_guide_mean}`` of one data set.

    A guide is a non-empty ``source_id`` of an image-guided sample (mode other than ``txt2img``);
    a sample without ``role`` (written before it existed) counts as ``hard`` when it has a
    source and ``random`` otherwise.
    """
    per_class = {name: 0 for name in class_names}
    for y in labels:
        name = class_names[y] if 0 <= int(y) < len(class_names) else UNKNOWN
        per_class[name] = per_class.get(name, 0) + 1
    modes: Counter = Counter()
    roles: Counter = Counter()
    guides: Counter = Counter()
    for p in provenances:
        guidance = p.get("guidance")
        mode = _text(guidance.get("mode")) if isinstance(guidance, dict) else UNKNOWN
        source = _text(p.get("source_id"))
        role = p.get("role")
        roles[_text(role) if role is not None else ("hard" if source not in ("", UNKNOWN) else "random")] += 1
        modes[mode] += 1
        if source not in ("", UNKNOWN) and mode != "txt2img":
            guides[source] += 1
    counts = list(guides.values())
    return {"images": len(labels), "per_class": per_class, "modes": dict(sorted(modes.items())),
            "roles": dict(sorted(roles.items())), "distinct_guides": len(counts),
            "renders_per_guide_max": max(counts, default=0),
            "renders_per_guide_mean": round(sum(counts) / len(counts), 3) if counts else 0.0}


def dataset_composition(access) -> dict:
    """:func:`composition` of a local data set opened as ``shards.reader.ShardRandomAccess``."""
    provenances = [access.provenance(i) for i in range(len(access))]
    return composition(provenances, access.labels(), access.class_names)
