"""``run(cfg)``: check the inputs, plan the round, render the missing shards on Ray, write the index.

1. Every input is checked (:mod:`.inputs`); nothing is created before that passes.
2. The plan (:mod:`.plan`) fixes every image's source, seed, mode, key and shard.
3. The output directory is prepared: ``build.json`` records the settings; a directory holding an
   unfinished build with the same settings is resumed (complete shards whose keys match the plan
   are kept, stray temporary files removed), one with other settings is refused unless
   ``output.overwrite``; a finished one with the same settings is left alone.
4. The missing shards become a Ray dataset, one row per shard; a pool of
   :class:`~.write.ShardWriter` actors (one GPU each, or CPU actors) renders and writes each shard
   atomically and returns only its record. ``executor: local`` runs the same writer here.
5. The contact sheet is drawn from the finished shards, then the index, ``_info.json`` and the
   dataset card are written, ``index.json`` last: until then readers refuse the directory.

The memory bank across workers: with ``bank_scope: worker`` (the paper's per-GPU bank) each actor
compares its images only with its own earlier renders of this build. Which shards an actor renders
is decided by Ray's scheduling at run time, so the images of ``actgen`` samples with the contrastive
term depend on it (keys, guides, seeds and modes never do). ``bank_scope: shard`` starts every
shard with an empty bank: then every image is a function of the plan and settings alone, the same
for one worker or many and for a resumed build. Banks never persist between builds (rounds).
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import io
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from actgen.shards import __version__
from actgen.shards.atomic import atomic_write_bytes, atomic_write_text, fsync_dir
from actgen.shards.config import diff_keys
from actgen.shards.errors import FormatError
from actgen.shards.reader import read_index, read_member, scan_tar
from actgen.shards.samples import decode_image, decode_provenance
from actgen.shards.writer import (CARD_FILE, INDEX_FILE, TIMM_INFO_FILE, DatasetIndex, ShardInfo, file_sha256,
                                  write_index)

from .config import BuildConfig, config_to_dict
from .inputs import BuildInputs, resolve_inputs, source_dict
from .plan import BuildPlan, make_plan, num_shards
from .write import RenderSpec, ShardWriter, contact_sheet, jsonable

_logger = logging.getLogger(__name__)

BUILD_FILE = "build.json"
CONTACT_SHEET_FILE = "contact_sheet.png"
BUILD_FORMAT = "actgen.build-state"
# Config keys that do not change what is rendered: a resumed build may change them freely.
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")   # a traceback's last line
_NOT_SETTINGS = ("checkpoint", "manifest", "dataset", "batch_size", "ray", "check_checkpoint", "generator.device",
                 "generator.local_files_only", "output.path", "output.overwrite", "output.contact_sheet", "output.name")


@dataclass(frozen=True)
class BuildResult:
    """What a build did.

    Attributes:
        output: the data-set directory.
        index: the finished data set's index.
        rendered: shard files rendered by this run.
        kept: shard files kept from an earlier, interrupted run.
        seconds: wall time of the rendering step (worker start-up included).
        shard_seconds: per rendered shard, the time its worker spent rendering and writing it.
    """

    output: Path
    index: DatasetIndex
    rendered: list[str]
    kept: list[str]
    seconds: float
    shard_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def run(cfg: BuildConfig) -> BuildResult:
    """Build one round's synthetic shard data set (see the module docstring)."""
    # 1. Inputs; nothing is written before they pass.
    inputs = resolve_inputs(cfg)
    cfg = resolve_horizon(cfg, inputs)
    # 2. Plan.
    shards = num_shards(cfg.budget, cfg.output.samples_per_shard, cfg.output.min_shards)
    plan = make_plan(inputs.manifest.samples, cfg.budget, cfg.seed, inputs.round, shards, mode=cfg.mode,
                     horizon=cfg.schedule.horizon if cfg.schedule.enabled else None, prefix=cfg.output.prefix)
    settings = build_settings(cfg, inputs, plan)
    _logger.info("round %d: %d images from %d hard samples in %d shards (%s), output %s", inputs.round, cfg.budget,
                 len(inputs.manifest.samples), shards, _mode_counts(plan), inputs.output)
    # 3. Output directory: fresh, resumed, or already finished.
    state = prepare_output(inputs.output, settings, plan, cfg.output.overwrite)
    if state.finished is not None:
        _logger.info("%s already holds this build, finished; nothing to do", inputs.output)
        return BuildResult(inputs.output, state.finished, rendered=[], kept=[s.filename for s in plan.shards],
                           seconds=0.0)
    atomic_write_text(inputs.output / BUILD_FILE, json.dumps(settings, indent=2, sort_keys=True) + "\n")
    todo = [s.number for s in plan.shards if s.filename not in state.kept]
    _logger.info("%d shards to render, %d kept from an earlier attempt", len(todo), len(state.kept))
    # 4. Render and write the missing shards.
    generator = cfg.generator
    if Path(generator.path).expanduser().is_dir():        # absolute for workers that run elsewhere
        generator = dataclasses.replace(generator, path=str(Path(generator.path).expanduser().absolute()))
    spec = RenderSpec(
        plan=plan, output_dir=str(inputs.output), class_names=tuple(inputs.class_names), generator=generator,
        device="cpu", guidance=cfg.guidance, batch_size=cfg.batch_size, bank_scope=cfg.bank_scope,
        dataset=inputs.images.source, dataset_fingerprint=inputs.images.fingerprint,
        checkpoint=str(Path(cfg.checkpoint).resolve()), checkpoint_sha256=inputs.checkpoint_sha256,
        resize_to=inputs.stored_size, resample=cfg.output.resample, image_format=cfg.output.image_format,
        round=inputs.round, build_seed=cfg.seed, tool_version=__version__,
        expected_generator_sha256=state.generator_sha256)
    start = time.perf_counter()
    rows = render(spec, todo, cfg, inputs) if todo else []
    seconds = time.perf_counter() - start
    if rows:
        n = sum(r["num_samples"] for r in rows)
        _logger.info("rendered %d images in %d shards in %.1f s (%.2f images/s)", n, len(rows), seconds, n / seconds)
    # 5. Contact sheet, then the index (last).
    infos = dict(state.kept)
    sizes = {(r["height"], r["width"]) for r in rows} | set(state.sizes)
    for r in rows:
        infos[r["filename"]] = ShardInfo(filename=r["filename"], num_samples=r["num_samples"], sha256=r["sha256"],
                                         size_bytes=r["size_bytes"])
    if len(sizes) != 1:
        raise RuntimeError(f"{inputs.output}: shards hold images of different sizes {sorted(sizes)}")
    if cfg.output.contact_sheet:
        write_contact_sheet(inputs.output, plan, inputs, cfg.output.contact_sheet)
    index = DatasetIndex(
        class_names=list(inputs.class_names), image_size=sizes.pop(),
        shards=[infos[s.filename] for s in plan.shards], num_samples=plan.num_samples, name=cfg.output.name,
        created={"tool_version": __version__, "time": _utc_now(), "round": inputs.round,
                 "generator": settings["settings"]["generator"]["path"],
                 "checkpoint_sha256": inputs.checkpoint_sha256, "manifest_sha256": inputs.manifest_sha256,
                 "config": settings["config"]})
    write_index(inputs.output, index)
    return BuildResult(inputs.output, index, rendered=[r["filename"] for r in rows], kept=sorted(state.kept),
                       seconds=seconds, shard_seconds={r["filename"]: r["seconds"] for r in rows})


# -- settings and the output directory ---------------------------------------------------------


def resolve_horizon(cfg: BuildConfig, inputs: BuildInputs) -> BuildConfig:
    """``schedule.horizon: null`` takes the manifest's ``header.num_rounds`` (recorded in build.json)."""
    if not cfg.schedule.enabled or cfg.schedule.horizon is not None:
        return cfg
    num_rounds = inputs.manifest.header.num_rounds
    if num_rounds is None:
        raise ValueError(f"config key 'schedule.horizon' is null and manifest {cfg.manifest} has no "
                         "'header.num_rounds' (it predates the field); set schedule.horizon to the run's "
                         "number of rounds")
    if num_rounds < 2:
        raise ValueError(f"manifest {cfg.manifest}: 'header.num_rounds' is {num_rounds}, but schedule.enabled "
                         "needs at least 2 generation rounds; set schedule.enabled=false for this run")
    return dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, horizon=num_rounds))


def build_settings(cfg: BuildConfig, inputs: BuildInputs, plan: BuildPlan) -> dict:
    """``build.json``: the settings that decide the images (compared on resume) and the full config."""
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
                    tool_version=__version__)
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
    previous = _read_build_file(output)
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
                               (TIMM_INFO_FILE, CARD_FILE, BUILD_FILE, CONTACT_SHEET_FILE)):
            path.unlink()
    fsync_dir(output)
    _logger.info("cleared the earlier build in %s (output.overwrite)", output)


def _read_build_file(output: Path) -> Optional[dict]:
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
    return index


def _resume(output: Path, plan: BuildPlan) -> OutputState:
    """Keep complete shards holding exactly the planned keys; delete stray temporaries and bad shards."""
    state = OutputState()
    for path in output.iterdir():
        # Hidden temporaries of writers that were killed (atomic writes never leave anything else).
        if path.name.startswith(".") and re.search(r"\.(partial|tmp)-\d+-[0-9a-f]{8}$", path.name):
            path.unlink()
    for shard in plan.shards:
        path = output / shard.filename
        if not path.is_file():
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


# -- rendering -------------------------------------------------------------------------------


def render(spec: RenderSpec, todo: list[int], cfg: BuildConfig, inputs: BuildInputs) -> list[dict]:
    """Render and write shards ``todo``; return their records (never the images)."""
    if cfg.ray.executor == "local":
        import torch

        device = _resolve_device(cfg.generator.device, torch.cuda.is_available())
        writer = ShardWriter(dataclasses.replace(spec, device=device), images=inputs.images)
        return [writer.write(n) for n in todo]
    return _render_on_ray(spec, todo, cfg)


def _resolve_device(device: str, has_gpu: bool) -> str:
    if device == "cuda" and not has_gpu:
        raise RuntimeError("generator.device is 'cuda' but no GPU is available to the workers")
    return device if device != "auto" else ("cuda" if has_gpu else "cpu")


def _render_on_ray(spec: RenderSpec, todo: list[int], cfg: BuildConfig) -> list[dict]:
    import ray
    import ray.data

    rc = cfg.ray
    started = False
    if not ray.is_initialized():
        # address=None starts a local cluster; anything else joins one (no local resources then).
        ray.init(address=rc.address, num_cpus=rc.num_cpus if rc.address is None else None,
                 include_dashboard=False, configure_logging=False, log_to_driver=True)
        started = True
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        device = _resolve_device(cfg.generator.device, gpus > 0)
        gpus_per_worker = rc.gpus_per_worker if rc.gpus_per_worker is not None else (1.0 if device == "cuda" else 0.0)
        workers = rc.workers or (max(1, int(gpus // max(gpus_per_worker, 1e-9))) if device == "cuda" else 1)
        workers = min(workers, len(todo))
        _logger.info("Ray: %d workers (%g CPU, %g GPU each) on %s; cluster %s", workers, rc.cpus_per_worker,
                     gpus_per_worker, device, {k: v for k, v in ray.cluster_resources().items()
                                               if k in ("CPU", "GPU", "memory")})
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        # One row and one block per shard, so the pool balances shard by shard; one task in
        # flight per actor, so a slow shard never holds others queued behind it.
        ds = ray.data.from_items([{"shard": n} for n in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            ShardWriter, batch_size=1, fn_constructor_kwargs={"spec": dataclasses.replace(spec, device=device)},
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            num_cpus=rc.cpus_per_worker, num_gpus=gpus_per_worker or None)
        rows = []
        for row in ds.iter_rows():
            rows.append({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
            _logger.info("%s done (%d/%d)", row["filename"], len(rows), len(todo))
        return rows
    except Exception as e:
        raise _unwrap_ray_error(e) from None
    finally:
        if started:
            ray.shutdown()


def _unwrap_ray_error(e: Exception) -> Exception:
    """The worker's own exception (e.g. a ValueError naming the file) instead of Ray's wrappers.

    Ray Data raises ``RayTaskError(UserCodeException)`` for a failing ``__call__`` and
    ``ActorDiedError`` for a failing ``__init__``; both carry the worker's traceback as text.
    """
    seen: set[int] = set()
    cause: Optional[BaseException] = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if not type(cause).__module__.startswith("ray."):
            return cause if isinstance(cause, Exception) else e
        # The worker's traceback is in the message; its last "SomeError: <message>" line that is
        # not one of Ray's own names the failure.
        message = getattr(cause, "error_msg", None) or str(cause)
        errors = [ln.strip() for ln in message.splitlines()
                  if _ERROR_LINE.match(ln.strip()) and not ln.strip().startswith("ray.")]
        if errors:
            return RuntimeError(f"a Ray worker failed: {errors[-1]}")
        cause = getattr(cause, "cause", None) or cause.__cause__
    return RuntimeError(f"Ray failed: {type(e).__name__}: {' '.join(str(e).split())[:500]}")


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _mode_counts(plan: BuildPlan) -> str:
    counts: dict[str, int] = {}
    for s in plan.samples:
        name = s.mode + ("+adv" if s.adversarial else "")
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


# -- contact sheet ---------------------------------------------------------------------------


def write_contact_sheet(output: Path, plan: BuildPlan, inputs: BuildInputs, count: int) -> Path:
    """``contact_sheet.png``: the first ``count`` planned images beside their guides (read back
    from the written shards, so the driver never holds more than these)."""
    wanted = {s.key: s for s in plan.samples[:count]}
    rendered = {}
    for shard in plan.shards:
        if not wanted.keys() - rendered.keys():
            break
        path = output / shard.filename
        with open(path, "rb") as f:
            for key, spans in scan_tar(f, str(path)):
                if key in wanted:
                    ext = next(e for e in spans if e not in ("cls", "json"))
                    rendered[key] = decode_image(read_member(f, spans[ext]), str(path), key, ext)
    pairs = []
    for key, s in wanted.items():
        guide = inputs.images.image(inputs.images.index_of(s.source_id))
        pairs.append((guide, rendered[key], f"{s.class_name} ({s.mode}{'+adv' if s.adversarial else ''})"))
    sheet = contact_sheet(pairs)
    path = output / CONTACT_SHEET_FILE
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    _logger.info("wrote %s (%d guide/render pairs)", path, len(pairs))
    return path
