"""``verify``: checksums, counts, decodable images and class names of a shard data set."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from .errors import FormatError
from .reader import deadline_after, join_location, local_file, read_index, read_member, scan_tar
from .samples import (SAMPLE_MEMBERS, decode_label, decode_provenance, decode_sample, extra_members,
                      sample_members)
from .writer import INDEX_FILE, ShardInfo, file_sha256

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyReport:
    location: str
    num_shards: int
    num_samples: int
    class_counts: dict[str, int]
    extra_members: dict[str, int] = field(default_factory=dict)   # extension -> samples that carry it (skipped)


def verify(location: str | Path, class_names: list[str] | None = None, decode: bool = True,
           timeout_s: Optional[float] = None, ray: bool = False) -> VerifyReport:
    """Raise FormatError (naming the shard and the problem) on a missing index, a sha256 or count
    mismatch, a truncated tar, an undecodable image, a label out of range, a key with a dot, a
    duplicate key, or class names different from ``class_names`` (the message shows both lists).

    Members other than ours (a caption, an embedding a team added) are not read; the report counts
    them by extension. The first problem found is raised (in shard order). Shards at http(s) URLs are downloaded to a temporary file
    (reading stops one byte past the index's size; ``timeout_s`` bounds all downloads together, or
    each shard's with ``ray``).
    With ``decode=False`` images are not decoded (faster; everything else is still checked).
    With ``ray`` the shards are checked by Ray Data's workers on the cluster this process has
    joined (``ray.init``), one shard at a time each; the keys come back to check for duplicates.
    """
    # 1. The index exists, parses and is self-consistent.
    deadline = deadline_after(timeout_s)
    index = read_index(location, timeout_s=timeout_s)
    names = index.class_names
    if class_names is not None and list(class_names) != names:
        raise FormatError(join_location(location, INDEX_FILE),
                          f"class names differ: data set has {names}, expected {list(class_names)}")
    check = ShardCheck(str(location), tuple(index.image_size), names, decode, timeout_s)
    results = _check_on_ray(check, index.shards) if ray else (check.shard(s, deadline) for s in index.shards)
    counts: Counter[int] = Counter()
    extras: Counter[str] = Counter()
    first_seen: dict[str, str] = {}
    for result in results:
        if result.error is not None:
            raise result.error
        for key in result.keys:
            if key in first_seen:
                raise FormatError(result.where, f"duplicate key {key!r}, also in {first_seen[key]}")
            first_seen[key] = result.where
        counts.update(result.counts)
        extras.update(result.extras)
    report = VerifyReport(location=str(location), num_shards=len(index.shards), num_samples=index.num_samples,
                          class_counts={name: counts[i] for i, name in enumerate(names)},
                          extra_members=dict(sorted(extras.items())))
    _logger.info("verified %s: %d samples in %d shards", location, report.num_samples, report.num_shards)
    return report


@dataclass
class ShardResult:
    """One shard's check: its keys in order, label counts and extra members, or the first problem."""
    where: str
    keys: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    extras: Counter = field(default_factory=Counter)
    error: Optional[FormatError] = None

    def to_json(self) -> str:
        error = None if self.error is None else [self.error.where, self.error.problem]
        return json.dumps({"where": self.where, "keys": self.keys, "counts": dict(self.counts),
                           "extras": dict(self.extras), "error": error})

    @classmethod
    def from_json(cls, text: str) -> ShardResult:
        """A worker's result as it came back from Ray (JSON counts have string keys)."""
        r = json.loads(text)
        return cls(r["where"], r["keys"], Counter({int(k): v for k, v in r["counts"].items()}), Counter(r["extras"]),
                   None if r["error"] is None else FormatError(*r["error"]))


@dataclass(frozen=True)
class ShardCheck:
    """Checks one shard of a data set by itself (bytes, tar, every sample); what holds across
    shards (duplicate keys, totals) is the caller's. Also a Ray Data worker: called with a batch of
    shard records (``filename``, ``size_bytes``, ``sha256``, ``num_samples``) it returns each one's
    result as plain columns, a problem as its ``where``/``problem`` text."""
    location: str
    image_size: tuple[int, int]
    names: list[str]
    decode: bool
    timeout_s: Optional[float] = None

    def shard(self, shard, deadline) -> ShardResult:
        where = join_location(self.location, shard.filename)
        result = ShardResult(where)
        try:
            self._check(shard, where, deadline, result)
        except FormatError as e:
            result.error = e
        return result

    def _check(self, shard, where: str, deadline, result: ShardResult) -> None:
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
                seen: set[str] = set()
                for key, spans in samples:
                    if key in seen:
                        raise FormatError(where, f"duplicate key {key!r}, also in {where}")
                    seen.add(key)
                    result.keys.append(key)
                    # Our members only: others are counted, never read.
                    result.extras.update(extra_members(spans))
                    members = {"__key__": key, **{ext: read_member(f, span) if ext in SAMPLE_MEMBERS else None
                                                  for ext, span in spans.items()}}
                    result.counts[_check_sample(members, where, self.image_size, self.names, self.decode)] += 1

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"position": [], "result": []}
        for position, shard in zip(batch["position"], _records(batch)):
            out["position"].append(int(position))
            out["result"].append(self.shard(shard, deadline_after(self.timeout_s)).to_json())
        return out


def _records(batch: dict) -> Iterator[ShardInfo]:
    for i in range(len(batch["filename"])):
        yield ShardInfo(filename=str(batch["filename"][i]), num_samples=int(batch["num_samples"][i]),
                        sha256=str(batch["sha256"][i]), size_bytes=int(batch["size_bytes"][i]))


def _check_on_ray(check: ShardCheck, shards: list[ShardInfo]) -> list[ShardResult]:
    """Every shard checked by Ray Data's workers (:func:`~.cluster.map_on_ray`); the results in
    shard order."""
    from .cluster import map_on_ray, ray_workers

    _logger.info("verifying %d shards on Ray (%d workers)", len(shards), ray_workers(len(shards)))
    rows = [{"position": i, **dataclasses.asdict(s)} for i, s in enumerate(shards)]
    results: list[Optional[ShardResult]] = [None] * len(rows)
    for row in map_on_ray(rows, ShardCheck, dataclasses.asdict(check)):
        results[int(row["position"])] = ShardResult.from_json(row["result"])
    return results


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
