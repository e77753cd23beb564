"""The output folder of a build: what is finished, what an interrupted attempt left, and clearing.

``build.json`` records the settings that decide the images (compared on resume) and the full
config. A folder holding an unfinished build with the same settings is resumed (complete shards
whose keys match the plan are kept, temporaries of killed writers removed); one with other
settings is refused unless ``output.overwrite``; a finished one with the same settings is left
alone, after its shards are checked against the index.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from actgen.shards import __version__
from actgen.shards._schema import jsonable
from actgen.shards.atomic import atomic_write_text, fsync_dir
from actgen.shards.config import diff_keys
from actgen.shards.errors import FormatError, writing
from actgen.shards.locks import pid_alive
from actgen.shards.reader import read_index, read_member, scan_tar
from actgen.shards.samples import decode_image, decode_provenance
from actgen.shards.writer import CARD_FILE, INDEX_FILE, TIMM_INFO_FILE, DatasetIndex, ShardInfo, file_sha256

from .config import BuildConfig, config_to_dict
from .bank_store import BANK_FILE, StartBank, part_path, restore_parts
from .contact_sheet import CONTACT_SHEET_FILE
from .inputs import BuildInputs, source_dict
from .plan import BuildPlan

_logger = logging.getLogger(__name__)

BUILD_FILE = "build.json"
BUILD_FORMAT = "actgen.build-state"
# Config keys that do not change what is rendered: a resumed build may change them freely.
_NOT_SETTINGS = ("checkpoint", "manifest", "dataset", "data_roots", "batch_size", "ray", "check_checkpoint",
                 "generator.device", "generator.local_files_only", "generator.compile", "generator.compile_backend",
                 "generator.channels_last",
                 "output.path", "output.overwrite", "output.contact_sheet", "output.name", "output.publish")


def build_settings(cfg: BuildConfig, inputs: BuildInputs, plan: BuildPlan, bank: StartBank) -> dict:
    """``build.json``: the settings that decide the images (compared on resume) and the full config.

    ``bank`` is the memory bank the build starts from (its files' sha256s are settings: the
    images depend on them)."""
    config = jsonable(config_to_dict(cfg))                 # inf -> "inf": strict JSON
    config["dataset"] = config["dataset"] or source_dict(inputs.images)
    settings = copy.deepcopy(config)
    for dotted in _NOT_SETTINGS:
        *parents, leaf = dotted.split(".")
        node = settings
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    settings.update(round=inputs.round, plan_sha256=plan.digest(), manifest_sha256=inputs.manifest_sha256,
                    checkpoint_sha256=inputs.checkpoint_sha256, dataset_fingerprint=inputs.images.fingerprint,
                    tool_version=__version__, bank_start=bank.record())
    if inputs.prompt_names is not None:     # the names decide the images, not only the file's path
        settings["prompt_names"] = list(inputs.prompt_names)
    if cfg.guide_preprocess == "classifier":
        settings["guide_crop_pct"] = inputs.bundle.crop_pct
    return {"format": BUILD_FORMAT, "format_version": 1, "settings": settings, "config": config}


@dataclass
class OutputState:
    """What the output directory already holds.

    Attributes:
        finished: the index, when a build with the same settings already finished there.
        kept: complete shards of an earlier attempt that match the plan, by filename.
        sizes: image sizes ``(H, W)`` found in kept shards.
        generator_sha256: the generator hash recorded in kept shards.
    """

    finished: Optional[DatasetIndex] = None
    kept: dict[str, ShardInfo] = dataclasses.field(default_factory=dict)
    sizes: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    generator_sha256: Optional[str] = None


def prepare_output(output: Path, settings: dict, plan: BuildPlan, overwrite: bool) -> OutputState:
    """Create, resume, refuse or clear the output directory (see the module docstring, step 3)."""
    if not output.exists():
        output.mkdir(parents=True)
        return OutputState()
    previous = read_build_file(output)
    same = previous is not None and previous.get("settings") == settings["settings"]
    finished = (output / INDEX_FILE).exists()
    if not same:
        if not overwrite:
            if previous is None and not any(output.iterdir()):
                return OutputState()
            if previous is None:
                what = "is not empty and holds no actgen-build output (no build.json)"
            else:
                changed = ", ".join(diff_keys(previous.get("settings", {}), settings["settings"])) or "format"
                what = (f"holds a{' finished' if finished else 'n unfinished'} build with other settings "
                        f"(differs in: {changed})")
            raise FileExistsError(f"{output}: output.path {what}; pass output.overwrite=true to replace it "
                                  "or choose another directory")
        clear_output(output)
        return OutputState()
    if finished:
        index = _finished_index(output, plan)
        if index is not None:
            return OutputState(finished=index)
        # Damaged after it was finished: unfinish it, then resume (good shards are kept).
        (output / INDEX_FILE).unlink()
        fsync_dir(output)
    return _resume(output, plan)


def clear_output(output: Path) -> None:
    """Remove an earlier build's files: ``index.json`` first (so no reader pairs it with new shards)."""
    index = output / INDEX_FILE
    if index.exists():
        index.unlink()
        fsync_dir(output)
    pattern = re.compile(r"^(\.?[A-Za-z0-9_-]+-\d{6}\.tar(\..*)?|\..*\.(tmp|partial)-.*)$")
    for path in output.iterdir():
        if path.is_file() and (pattern.match(path.name) or path.name in
                               (TIMM_INFO_FILE, CARD_FILE, BUILD_FILE, CONTACT_SHEET_FILE, BANK_FILE)):
            if not _live_temporary(path.name):
                path.unlink()
    fsync_dir(output)
    _logger.info("cleared the earlier build in %s (output.overwrite)", output)


def read_build_file(output: Path) -> Optional[dict]:
    path = output / BUILD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"format": "unreadable"}
    return data if isinstance(data, dict) and data.get("format") == BUILD_FORMAT else {"format": "unknown"}


def _finished_index(output: Path, plan: BuildPlan) -> Optional[DatasetIndex]:
    """The index, if it lists the plan's shards and each file still has its size and sha256."""
    try:
        index = read_index(output)
    except FormatError:
        return None
    if [s.filename for s in index.shards] != [s.filename for s in plan.shards]:
        return None
    for shard in index.shards:
        path = output / shard.filename
        if not path.is_file() or path.stat().st_size != shard.size_bytes or file_sha256(path) != shard.sha256:
            _logger.warning("%s: differs from the index; the build is resumed", path)
            return None
    bank = index.created.get("memory_bank")
    if isinstance(bank, dict) and file_sha256_or_none(output / BANK_FILE) != bank.get("sha256"):
        _logger.warning("%s: differs from the index; the build is resumed", output / BANK_FILE)
        return None
    return index


def _resume(output: Path, plan: BuildPlan) -> OutputState:
    """Keep complete shards holding exactly the planned keys; delete stray temporaries and bad shards."""
    state = OutputState()
    remove_dead_temporaries(output)
    restore_parts(output, [s.filename for s in plan.shards], plan.round)
    for shard in plan.shards:
        path = output / shard.filename
        if not path.is_file():
            continue
        if not part_path(output, shard.filename).is_file():
            _logger.warning("%s: not kept (its memory-bank part is missing); it is rendered again", path)
            path.unlink()
            continue
        try:
            with open(path, "rb") as f:
                members = scan_tar(f, str(path))
                keys = [key for key, _ in members]
                if keys != shard.keys:
                    raise FormatError(str(path), "holds other keys than the plan")
                key, spans = members[0]
                ext = next(e for e in spans if e not in ("cls", "json"))
                image = decode_image(read_member(f, spans[ext]), str(path), key, ext)
                generator = decode_provenance(read_member(f, spans["json"]), str(path), key).get("generator", {})
        except (FormatError, OSError, EOFError) as e:
            _logger.warning("%s: not kept (%s); it is rendered again", path, e)
            path.unlink()
            continue
        state.kept[shard.filename] = ShardInfo(filename=shard.filename, num_samples=len(keys),
                                               sha256=file_sha256(path), size_bytes=path.stat().st_size)
        state.sizes.append((image.height, image.width))
        digest = generator.get("weights_sha256") if isinstance(generator, dict) else None
        if state.generator_sha256 is None:
            state.generator_sha256 = digest
        elif digest != state.generator_sha256:
            raise FileExistsError(f"{output}: kept shards were rendered by different generators; pass "
                                  "output.overwrite=true to start over")
    fsync_dir(output)
    return state



def remove_dead_temporaries(output: Path) -> None:
    """Delete hidden temporaries of writers that were killed (atomic writes never leave anything
    else): before a resumed build, and after a build whose worker died mid-shard. The build holds
    the output's lock, so no other build writes here; a temporary whose writer still lives on this
    host (a worker of a killed build, still finishing) is its."""
    for path in output.iterdir():
        if path.is_file() and _temporary_pid(path.name) is not None and not _live_temporary(path.name):
            path.unlink()


_TEMPORARY = re.compile(r"^\..*\.(?:partial|tmp)-(\d+)-[0-9a-f]{8}$")   # shards.atomic.temp_sibling


def _temporary_pid(name: str) -> Optional[int]:
    """The writer's pid in a temporary's name (``.<name>.<tag>-<pid>-<8 hex>``), None for other files."""
    m = _TEMPORARY.match(name)
    return int(m.group(1)) if m else None


def _live_temporary(name: str) -> bool:
    """A temporary whose writer is another live process on this host (never deleted).

    This process writes nothing while it prepares the folder, so its own are left-overs. The pid
    is that of the writer's host; on a Ray cluster a worker on another node cannot be checked
    this way, but the output lock already keeps other builds out.
    """
    pid = _temporary_pid(name)
    return pid is not None and pid != os.getpid() and pid_alive(pid)


def write_build_file(output: Path, settings: dict) -> None:
    """``build.json``, before any shard is rendered (so a resumed attempt can compare settings)."""
    with writing(output / BUILD_FILE):
        atomic_write_text(output / BUILD_FILE, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def file_sha256_or_none(path: Path) -> Optional[str]:
    return file_sha256(path) if path.is_file() else None
