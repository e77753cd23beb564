"""The memory bank on disk: what each round's renders add to it, and the bank a round starts from.

The paper keeps one memory bank per GPU for the whole run, so by mid-training a new render is
pushed away from the renders of its class in every earlier round. Here the bank is persisted with
each round's data set, ``memory_bank.safetensors`` (the final guided latents this round added, in
plan order; FORMAT.md), and a build of round r starts from the banks of rounds 0..r-1 of the same
run, so every image is a function of the plan and the earlier rounds alone, for any worker count
and across resumes.

While a round renders, each shard's additions go to a hidden part file beside the shard (written
before the shard, so a kept shard always has its part); the parts are merged in plan order into
``memory_bank.safetensors`` (which records each shard's share) before the index is written, and
removed after it; a resumed build whose parts are gone takes its kept shards' shares from the
merged file, so a damaged finished build resumes shard by shard like an interrupted one.

Numpy only (``safetensors.numpy``): the driver reads banks without torch.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from actgen.shards.atomic import atomic_write_bytes
from actgen.shards.errors import FormatError
from actgen.shards.writer import INDEX_FILE, file_sha256, file_stamp
from actgen.shards.writer import BANK_FILE

_logger = logging.getLogger(__name__)

BANK_FORMAT = "actgen.memory-bank"
BANK_FORMAT_VERSION = 1
_PART_SUFFIX = ".bank.safetensors"
_MAX_BANK_BYTES = 8 << 30        # a sanity bound on what a bank file may hold (SD: 32 KiB per latent)


@dataclasses.dataclass(frozen=True)
class BankEntries:
    """Latents in the order they were added: ``labels [n]`` int64, ``latents [n, C, h, w]`` float16."""

    labels: np.ndarray
    latents: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def per_class(self) -> dict[str, int]:
        values, counts = np.unique(self.labels, return_counts=True)
        return {str(int(v)): int(c) for v, c in zip(values, counts)}

    @staticmethod
    def concat(parts: Sequence["BankEntries"]) -> "BankEntries":
        parts = [p for p in parts if len(p)]
        if not parts:
            return EMPTY
        shapes = {p.latents.shape[1:] for p in parts}
        if len(shapes) != 1:
            raise FormatError("memory bank", f"latents of different shapes {sorted(shapes)} cannot be combined")
        return BankEntries(np.concatenate([p.labels for p in parts]), np.concatenate([p.latents for p in parts]))


EMPTY = BankEntries(np.zeros(0, np.int64), np.zeros((0, 0, 0, 0), np.float16))


def part_path(output: str | Path, shard_filename: str) -> Path:
    """The hidden file holding one shard's bank additions."""
    return Path(output) / f".{shard_filename}{_PART_SUFFIX}"


def save_entries(path: str | Path, entries: BankEntries, round: int,
                 shards: Optional[list[tuple[str, int]]] = None) -> str:
    """Write ``entries`` atomically (safetensors, format metadata; ``shards``: each shard's
    filename and number of entries, in order, for a merged file); return the file's sha256."""
    from safetensors.numpy import save

    labels = np.ascontiguousarray(entries.labels, dtype=np.int64)
    latents = np.ascontiguousarray(entries.latents, dtype=np.float16)
    if len(labels) != len(latents):
        raise ValueError(f"{len(labels)} labels for {len(latents)} latents")
    # One metadata key: safetensors writes a map's keys in a per-process random order, and the
    # same bank must be the same bytes wherever it is written.
    meta = {"format": BANK_FORMAT, "format_version": BANK_FORMAT_VERSION, "round": round}
    if shards is not None:
        meta["shards"] = [[name, int(n)] for name, n in shards]
    header = json.dumps(meta, sort_keys=True)
    data = save({"labels": labels, "latents": latents}, metadata={"actgen": header})
    atomic_write_bytes(path, data)
    return file_sha256(path)


def load_entries(path: str | Path) -> BankEntries:
    """Read a bank file (or part); FormatError naming the file when it is not one."""
    return read_bank(path)[0]


def read_bank(path: str | Path) -> tuple[BankEntries, dict]:
    """``(entries, metadata)`` of a bank file (or part); FormatError naming the file when it is not one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FormatError(str(path), "memory bank file not found")
    if path.stat().st_size > _MAX_BANK_BYTES:
        raise FormatError(str(path), f"{path.stat().st_size} bytes: larger than a memory bank can be")
    try:
        with safe_open(str(path), framework="numpy") as f:
            try:
                meta = json.loads((f.metadata() or {}).get("actgen", "{}"))
            except json.JSONDecodeError:
                meta = {}
            meta = meta if isinstance(meta, dict) else {}
            if meta.get("format") != BANK_FORMAT or meta.get("format_version") != BANK_FORMAT_VERSION:
                raise FormatError(str(path), f"format is {meta.get('format')!r} v{meta.get('format_version')}, "
                                             f"expected {BANK_FORMAT!r} v{BANK_FORMAT_VERSION}")
            if set(f.keys()) != {"labels", "latents"}:
                raise FormatError(str(path), f"tensors {sorted(f.keys())}, expected ['labels', 'latents']")
            labels, latents = f.get_tensor("labels"), f.get_tensor("latents")
    except SafetensorError as e:
        raise FormatError(str(path), f"not a safetensors file ({e})") from None
    if labels.ndim != 1 or labels.dtype != np.int64 or latents.ndim != 4 or len(latents) != len(labels):
        raise FormatError(str(path), f"labels {labels.dtype}{list(labels.shape)} and latents "
                                     f"{latents.dtype}{list(latents.shape)} do not pair up ([n] int64, [n, C, h, w])")
    if not np.issubdtype(latents.dtype, np.floating) or not np.isfinite(latents).all():
        raise FormatError(str(path), f"latents must be finite floating-point values, got {latents.dtype}"
                                     + (" with non-finite values" if np.issubdtype(latents.dtype, np.floating) else ""))
    if len(labels) and labels.min() < 0:
        raise FormatError(str(path), f"label {int(labels.min())} is negative")
    if len(labels) == 0:
        return EMPTY, meta
    return BankEntries(labels, latents.astype(np.float16, copy=False)), meta


def merge_parts(output: str | Path, shard_filenames: Sequence[str], round: int) -> dict:
    """The shards' parts, in plan order, into ``memory_bank.safetensors``; -> the index's record."""
    parts = [load_entries(part_path(output, name)) for name in shard_filenames]
    entries = BankEntries.concat(parts)
    sha = save_entries(Path(output) / BANK_FILE, entries, round,
                       shards=[(name, len(p)) for name, p in zip(shard_filenames, parts)])
    return {"file": BANK_FILE, "sha256": sha, "entries": len(entries), "per_class": entries.per_class()}


def remove_parts(output: str | Path) -> None:
    for part in Path(output).glob(f".*{_PART_SUFFIX}"):
        part.unlink(missing_ok=True)


def restore_parts(output: str | Path, shard_filenames: Sequence[str], round: int) -> None:
    """Write back the parts of ``shard_filenames`` that are missing, from the merged bank file of an
    earlier finished attempt, when it records their shares; silently nothing otherwise (the
    shards without a part are then rendered again)."""
    output = Path(output)
    missing = [n for n in shard_filenames if not part_path(output, n).is_file()]
    if not missing or not (output / BANK_FILE).is_file():
        return
    try:
        entries, meta = read_bank(output / BANK_FILE)
    except FormatError:
        return
    shards = meta.get("shards")
    if not isinstance(shards, list) or sum(int(n) for _, n in shards) != len(entries):
        return
    first = 0
    for name, n in shards:
        if name in missing:
            share = BankEntries(entries.labels[first:first + n], entries.latents[first:first + n]) if n else EMPTY
            save_entries(part_path(output, name), share, round)
        first += int(n)


@dataclasses.dataclass(frozen=True)
class StartBank:
    """The bank a build starts from.

    Attributes:
        files: the earlier rounds' bank files, in round order (workers read these).
        rounds: the round of each file.
        sha256: each file's sha256 (as its data set's index records it).
        per_class: entries per class label over all files (before the per-class capacity applies).
        missing: earlier rounds that have no finished data set with a bank (skipped).
    """

    files: tuple[str, ...] = ()
    rounds: tuple[int, ...] = ()
    sha256: tuple[str, ...] = ()
    per_class: dict = dataclasses.field(default_factory=dict)
    missing: tuple[int, ...] = ()

    def record(self) -> dict:
        """What ``build.json`` records (and compares on resume: images depend on it)."""
        return {"rounds": list(self.rounds), "sha256": list(self.sha256), "entries_per_class": self.per_class,
                "entries": sum(self.per_class.values()), "missing_rounds": list(self.missing)}


def earlier_rounds(output: Path, round: int) -> Optional[list[tuple[int, Path]]]:
    """The data-set folders of rounds 0..round-1 when ``output`` is ``<run>/rounds/<round>/shards``
    (the trainer's round folder layout), else None."""
    from actgen.shards.rounds import ROUNDS_DIR, SHARDS_DIR

    output = Path(output)
    if output.name != SHARDS_DIR or output.parent.name != str(round) or output.parent.parent.name != ROUNDS_DIR:
        return None
    rounds = output.parent.parent
    return [(k, rounds / str(k) / SHARDS_DIR) for k in range(round)]


# What the driver learnt of each earlier bank file, under the file's stat record: a builder that
# stays up hashes and reads each bank once, not once per later round (O(rounds) instead of
# O(rounds^2)); a file whose size, mtime or inode changed is hashed and read again.
_FACTS: dict[str, tuple[tuple, dict]] = {}


def _bank_facts(path: Path, expected_sha256) -> Optional[dict]:
    """``{"sha256", "entries", "per_class", "shape", "max_label"}`` of a bank file whose sha256 is
    ``expected_sha256`` (only ``{"sha256"}`` when it is not: the caller refuses it), None if absent."""
    if not path.is_file():
        return None
    key = str(path.resolve())
    stamp = _stat_key(key)
    held = _FACTS.get(key)
    if held is not None and held[0] == stamp and held[1]["sha256"] == expected_sha256:
        return held[1]
    sha = file_sha256(path)
    if sha != expected_sha256:
        return {"sha256": sha}
    entries = load_entries(path)
    facts = {"sha256": sha, "entries": len(entries), "per_class": entries.per_class(),
             "shape": tuple(entries.latents.shape[1:]), "max_label": int(entries.labels.max()) if len(entries) else -1}
    _FACTS[key] = (stamp, facts)
    return facts


def start_bank(output: Path, round: int, sources: Optional[Sequence[str]],
               num_classes: Optional[int] = None) -> StartBank:
    """The bank of the earlier rounds: ``sources`` (data-set folders, in order) when given, else the
    run's earlier round folders. Each must be a finished data set whose index records its bank
    file's sha256; one without is skipped (named in ``missing``), a bank whose bytes differ from
    its index is an error, and so is one whose labels lie outside ``num_classes`` or whose latents
    differ in shape from the earlier ones (each error names the file)."""
    from actgen.shards.reader import read_index

    if sources is not None:
        folders = [(i, Path(s)) for i, s in enumerate(sources)]
    else:
        folders = earlier_rounds(output, round) or []
    files, rounds, shas, missing = [], [], [], []
    per_class: dict[str, int] = {}
    shape = None      # (latent shape, the file it came from)
    for k, folder in folders:
        if not (folder / INDEX_FILE).is_file():
            missing.append(k)
            continue
        index = read_index(folder)
        record = index.created.get("memory_bank")
        if not isinstance(record, dict) or record.get("file") != BANK_FILE:
            missing.append(k)
            continue
        path = folder / BANK_FILE
        facts = _bank_facts(path, record.get("sha256"))
        sha = facts["sha256"] if facts else None
        if sha != record.get("sha256"):
            raise FormatError(str(path), f"sha256 is {sha}, {folder / INDEX_FILE} says {record.get('sha256')}")
        if num_classes is not None and facts["entries"] and facts["max_label"] >= num_classes:
            raise FormatError(str(path), f"label {facts['max_label']} is outside the build's "
                                         f"{num_classes} classes (a bank of another run?)")
        if facts["entries"] and shape is not None and facts["shape"] != shape[0]:
            raise FormatError(str(path), f"latents are {list(facts['shape'])}, the bank of {shape[1]} "
                                         f"holds {list(shape[0])} (banks of another generator?)")
        if facts["entries"] and shape is None:
            shape = (facts["shape"], path)
        for label, n in facts["per_class"].items():
            per_class[label] = per_class.get(label, 0) + n
        files.append(str(path.resolve()))
        rounds.append(int(index.created.get("round", k)))
        shas.append(sha)
    if missing:
        _logger.warning("memory bank: no bank from earlier round(s) %s (unfinished, or built before banks were "
                        "kept); starting from rounds %s", missing, rounds)
    return StartBank(tuple(files), tuple(rounds), tuple(shas), dict(sorted(per_class.items(), key=lambda kv: int(kv[0]))),
                     tuple(missing))


def load_start(files: Sequence[str]) -> BankEntries:
    """The earlier rounds' entries in round order (a worker's start bank)."""
    return BankEntries.concat([load_entries(f) for f in files])


def kept_entries(entries: BankEntries, capacity: int, total_capacity: Optional[int]) -> BankEntries:
    """The entries a ``MemoryBank(capacity, total_capacity)`` holds after adding ``entries`` in
    order (the same eviction: per class the oldest past ``capacity``; past ``total_capacity``, the
    oldest of the class holding the most, the lowest label on a tie), in their order. A bank
    loaded from these holds exactly what one loaded from all of ``entries`` holds."""
    from collections import deque

    held: dict[int, deque] = {}
    total = 0
    for i, label in enumerate(entries.labels.tolist()):
        q = held.setdefault(label, deque())
        q.append(i)
        total += 1
        if len(q) > capacity:
            q.popleft()
            total -= 1
        if total_capacity is not None and total > total_capacity:
            held[max(sorted(held), key=lambda k: len(held[k]))].popleft()
            total -= 1
    keep = np.sort(np.fromiter((i for q in held.values() for i in q), dtype=np.int64, count=total))
    if len(keep) == len(entries):
        return entries
    return BankEntries(entries.labels[keep], entries.latents[keep]) if len(keep) else EMPTY


# A worker's start bank across rounds: round r's files are round r-1's plus one, so only the new
# one is read, and what is kept is bounded by the bank's capacities, not by the round number.
_START: dict[str, tuple] = {}


def _stat_key(path: str) -> tuple:
    return (path, *file_stamp(path))


def incremental_start(files: Sequence[str], capacity: int, total_capacity: Optional[int]) -> BankEntries:
    """``kept_entries(load_start(files), ...)``, reading only the files this process's previous
    call did not (when its files are a prefix of these, unchanged on disk, with equal capacities)."""
    stamps = tuple(_stat_key(f) for f in files)
    held = _START.get("bank")
    if held is not None and held[0] == (capacity, total_capacity) and stamps[:len(held[1])] == held[1]:
        base, new = held[2], files[len(held[1]):]
    else:
        base, new = EMPTY, files
    entries = kept_entries(BankEntries.concat([base, *(load_entries(f) for f in new)]), capacity, total_capacity)
    _START["bank"] = ((capacity, total_capacity), stamps, entries)
    return entries

