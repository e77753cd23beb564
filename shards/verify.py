"""``verify``: checksums, counts, decodable images and class names of a shard data set."""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import FormatError
from .reader import deadline_after, join_location, local_file, read_index, read_member, scan_tar
from .samples import (SAMPLE_MEMBERS, decode_label, decode_provenance, decode_sample, extra_members,
                      sample_members)
from .writer import INDEX_FILE, file_sha256

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyReport:
    location: str
    num_shards: int
    num_samples: int
    class_counts: dict[str, int]
    extra_members: dict[str, int] = field(default_factory=dict)   # extension -> samples that carry it (skipped)


def verify(location: str | Path, class_names: list[str] | None = None, decode: bool = True,
           timeout_s: Optional[float] = None) -> VerifyReport:
    """Raise FormatError (naming the shard and the problem) on a missing index, a sha256 or count
    mismatch, a truncated tar, an undecodable image, a label out of range, a key with a dot, a
    duplicate key, or class names different from ``class_names`` (the message shows both lists).

    Members other than ours (a caption, an embedding a team added) are not read; the report counts
    them by extension. The first problem found is raised. Shards at http(s) URLs are downloaded to a temporary file
    (reading stops one byte past the index's size; ``timeout_s`` bounds all downloads together).
    With ``decode=False`` images are not decoded (faster; everything else is still checked).
    """
    # 1. The index exists, parses and is self-consistent.
    deadline = deadline_after(timeout_s)
    index = read_index(location, timeout_s=timeout_s)
    names = index.class_names
    if class_names is not None and list(class_names) != names:
        raise FormatError(join_location(location, INDEX_FILE),
                          f"class names differ: data set has {names}, expected {list(class_names)}")
    counts: Counter[int] = Counter()
    extras: Counter[str] = Counter()
    first_seen: dict[str, str] = {}
    for shard in index.shards:
        where = join_location(location, shard.filename)
        with local_file(where, shard.size_bytes, deadline,
                        f"size is over {shard.size_bytes} bytes, index says {shard.size_bytes}") as path:
            # 2. Bytes: size first (names truncation plainly), then sha256.
            size = os.path.getsize(path)
            if size != shard.size_bytes:
                hint = " (truncated)" if size < shard.size_bytes else ""
                raise FormatError(where, f"size is {size} bytes, index says {shard.size_bytes}{hint}")
            digest = file_sha256(path)
            if digest != shard.sha256:
                raise FormatError(where, f"sha256 is {digest}, index says {shard.sha256} (corrupted or replaced)")
            # 3. Tar structure and sample count.
            with open(path, "rb") as f:
                samples = scan_tar(f, where)
                if len(samples) != shard.num_samples:
                    raise FormatError(where, f"holds {len(samples)} samples, index says {shard.num_samples}")
                # 4. Each sample: members, label, provenance, image.
                for key, spans in samples:
                    if key in first_seen:
                        raise FormatError(where, f"duplicate key {key!r}, also in {first_seen[key]}")
                    first_seen[key] = where
                    # Our members only: others are counted, never read.
                    extras.update(extra_members(spans))
                    members = {"__key__": key, **{ext: read_member(f, span) if ext in SAMPLE_MEMBERS else None
                                                  for ext, span in spans.items()}}
                    label = _check_sample(members, where, index.image_size, names, decode)
                    counts[label] += 1
    report = VerifyReport(location=str(location), num_shards=len(index.shards), num_samples=index.num_samples,
                          class_counts={name: counts[i] for i, name in enumerate(names)},
                          extra_members=dict(sorted(extras.items())))
    _logger.info("verified %s: %d samples in %d shards", location, report.num_samples, report.num_shards)
    return report


def _check_sample(members: dict, where: str, image_size: tuple[int, int], names: list[str], decode: bool) -> int:
    key, ext = sample_members(members, where)
    if decode:
        sample = decode_sample(members, where)
        label, provenance = sample.label, sample.provenance
        size = (sample.image.height, sample.image.width)
        if size != tuple(image_size):
            raise FormatError(where, f"sample {key!r}: image is {size[0]}x{size[1]} (HxW), index says "
                                     f"{image_size[0]}x{image_size[1]}")
    else:
        label = decode_label(members["cls"], where, key)
        provenance = decode_provenance(members["json"], where, key)
    if label >= len(names):
        raise FormatError(where, f"sample {key!r}: label {label} outside 0..{len(names) - 1}")
    if provenance["class_name"] != names[label]:
        raise FormatError(where, f"sample {key!r}: provenance class_name {provenance['class_name']!r} is not "
                                 f"{names[label]!r} (label {label})")
    return label
