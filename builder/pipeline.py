"""``run(cfg)``: one round's build, stage by stage; each stage is a module of its own.

1. :mod:`.inputs` checks every input; nothing is created before that passes.
2. :mod:`.plan` fixes every image's source, seed, mode, key and shard.
3. :mod:`.outputs` prepares the output folder: fresh, resumed after a kill (complete shards kept),
   refused (other settings), or already finished; ``build.json`` records the settings. From here
   on the build holds the folder's lock (a file beside it): a second build of it exits, naming this one.
4. :mod:`.workers` renders the missing shards on a Ray actor pool (or here), each shard by a
   :class:`~.render.ShardWriter`, written atomically.
5. :mod:`.contact_sheet` draws guides beside renders, then the index, ``_info.json`` and the
   dataset card are written, ``index.json`` last: until then readers refuse the folder. A write that
   fails for want of space (or a file-size limit) is a ``WriteFailed`` naming the file.

:func:`build_round` is the entry for a trainer's round folder (one-off ``--round-dir`` builds and
the two-job watcher alike): it marks the round in ``build_status.json`` around :func:`run`.

The memory bank (:mod:`.bank_store`): with ``bank_scope: run`` (the default, the paper's bank
that lives for the whole run) every shard starts from the banks of the run's earlier rounds and
grows in plan order, so every image is a function of the plan and the earlier rounds alone, the
same for one worker or many and for a resumed build; the round's additions are written to
``memory_bank.safetensors`` for the rounds after it. ``shard`` starts every shard empty;
``worker`` keeps one bank per actor for the build (images then depend on Ray's scheduling).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from actgen.shards import __version__
from actgen.shards._schema import utc_now
from actgen.shards.errors import one_line, writing
from actgen.shards.locks import hold_lock, sibling_lock_path
from actgen.shards.portable import portable, portable_path
from actgen.shards.rounds import MANIFEST_FILE, SHARDS_DIR, STATUS_FILE, BuildStatus, read_status, write_status
from actgen.shards.writer import COPIES_KEY, DatasetIndex, ShardInfo, write_index

from .config import BuildConfig
from .bank_store import BANK_FILE, StartBank, merge_parts, remove_parts, start_bank
from .contact_sheet import CONTACT_SHEET_FILE, write_contact_sheet
from .inputs import BuildInputs, resolve_inputs, round_not_fired
from .outputs import build_settings, prepare_output, remove_dead_temporaries, write_build_file
from .plan import BuildPlan, effective_budget, make_plan, num_shards, plan_stats
from .workers import WorkerPool, render_shards

_logger = logging.getLogger(__name__)


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


def output_lock(output: str | Path):
    """The lock every build holds on its output folder (a file beside it): one writer per folder,
    so a build's clean-up of temporaries never meets those of another live build."""
    path = Path(output).expanduser().absolute()
    return hold_lock(sibling_lock_path(path, "actgen-build"), f"output folder {path}")


def run(cfg: BuildConfig, pool: Optional[WorkerPool] = None) -> BuildResult:
    """Build one round's synthetic shard data set (see the module docstring).

    ``pool``: render workers kept across builds (``--watch``, ``--serve``); None: this build's own.

    Raises:
        ValueError, OSError: bad input (nothing is written then), or the output folder is being
            built by another live process (:class:`~actgen.shards.locks.LockHeld`).
        RuntimeError: a failure while rendering or writing (a full disk: ``WriteFailed``).
    """
    # 1. Inputs, and the cluster when one is named; nothing is written before they pass.
    inputs = resolve_inputs(cfg)
    cfg = resolve_horizon(not_fired_fallback(cfg, inputs), inputs)
    if cfg.ray.executor == "ray" and cfg.ray.address is not None:
        from actgen.shards.cluster import connect

        connect(cfg.ray.address)
    with output_lock(inputs.output):
        result = _build(cfg, inputs, pool)
        if cfg.output.publish:
            # 10. Publish: after the local set is finished, so a failed upload is retried by
            # running the build again (the finished set is left alone and published anew).
            from actgen.shards.publish import publish

            publish(inputs.output, publish_location(cfg.output.publish, inputs.round), overwrite=True)
        return result


def publish_location(template: str, round: int) -> str:
    """``output.publish`` for round ``round``: its ``{round}`` placeholder filled in."""
    return template.replace("{round}", str(round))


def _build(cfg: BuildConfig, inputs: BuildInputs, pool: Optional[WorkerPool]) -> BuildResult:
    # 2. Plan.
    hard = inputs.manifest.samples
    budget = round_budget(cfg, len(hard))
    shards = num_shards(budget, cfg.output.samples_per_shard, min(cfg.output.min_shards, budget))
    alloc = cfg.allocation
    plan = make_plan(hard, budget, cfg.seed, inputs.round, shards, mode=cfg.mode,
                     horizon=cfg.schedule.horizon if cfg.schedule.enabled else None, prefix=cfg.output.prefix,
                     targets=cfg.targets, class_names=inputs.class_names, allocation=alloc.policy,
                     max_per_sample=cfg.max_renders_per_sample, fill=alloc.fill,
                     random_fraction=alloc.random_fraction, guide_pool=inputs.guide_pool)
    if cfg.targets == "hard" and alloc.policy == "balanced" and alloc.fill == "train" and not inputs.guide_pool:
        _logger.warning("allocation.fill is 'train' but manifest %s lists no header.guide_pool: the classes' "
                        "shares beyond their hard samples are rendered text-to-image", cfg.manifest)
    bank = (start_bank(inputs.output, inputs.round, cfg.bank_sources, len(inputs.class_names))
            if cfg.bank_scope == "run" else StartBank())
    settings = build_settings(cfg, inputs, plan, bank)
    settings["settings"]["allocation"] = plan_stats(plan, inputs.class_names)
    if round_not_fired(inputs.manifest):
        settings["settings"]["round_not_fired"] = inputs.manifest.header.selection.get("reason")
    stats = settings["settings"]["allocation"]
    _logger.info("round %d: %d images (%s targets, allocation %s) from %d hard samples in %d shards (%s; %d classes, "
                 "%d distinct guides, at most %d renders per guide), output %s", inputs.round, budget, cfg.targets,
                 alloc.policy, len(hard), shards, mode_counts(plan), sum(1 for v in stats["per_class"].values() if v),
                 stats["distinct_guides"], stats["renders_per_guide_max"], inputs.output)
    # 3. Output directory: fresh, resumed, or already finished.
    state = prepare_output(inputs.output, settings, plan, cfg.output.overwrite)
    if state.finished is not None:
        _logger.info("%s already holds this build, finished; nothing to do", inputs.output)
        return BuildResult(inputs.output, state.finished, rendered=[], kept=[s.filename for s in plan.shards],
                           seconds=0.0)
    write_build_file(inputs.output, settings)
    todo = [s.number for s in plan.shards if s.filename not in state.kept]
    _logger.info("%d shards to render, %d kept from an earlier attempt; memory bank starts from rounds %s "
                 "(entries per class %s)", len(todo), len(state.kept), list(bank.rounds), bank.per_class)
    # 4. Render and write the missing shards.
    generator = cfg.generator
    if Path(generator.path).expanduser().is_dir():        # absolute for workers that run elsewhere
        generator = dataclasses.replace(generator, path=str(Path(generator.path).expanduser().absolute()))
    from .render import RenderSpec   # torch: imported only once there is something to render

    spec = RenderSpec(
        plan=plan, output_dir=str(inputs.output), class_names=tuple(inputs.class_names), generator=generator,
        device="cpu", guidance=cfg.guidance, batch_size=cfg.batch_size, bank_scope=cfg.bank_scope,
        dataset=inputs.images.source, dataset_fingerprint=inputs.images.fingerprint,
        checkpoint=str(Path(cfg.checkpoint).resolve()), checkpoint_sha256=inputs.checkpoint_sha256,
        resize_to=inputs.stored_size, resample=cfg.output.resample, image_format=cfg.output.image_format,
        round=inputs.round, build_seed=cfg.seed, tool_version=__version__,
        expected_generator_sha256=state.generator_sha256, bank_files=bank.files,
        prompt_names=tuple(inputs.prompt_names) if inputs.prompt_names is not None else None,
        guide_crop=((tuple(inputs.bundle.input_size[1:]), inputs.bundle.crop_pct)
                    if cfg.guide_preprocess == "classifier" else None))
    start = time.perf_counter()
    rows = render_shards(spec, todo, cfg, inputs.images, pool) if todo else []
    seconds = time.perf_counter() - start
    remove_dead_temporaries(inputs.output)        # what a worker that died mid-shard left
    if rows:
        n = sum(r["num_samples"] for r in rows)
        _logger.info("rendered %d images in %d shards in %.1f s (%.2f images/s)", n, len(rows), seconds, n / seconds)
    # 5. The round's memory bank, the contact sheet, then the index (last).
    return _finish(cfg, inputs, plan, settings, state, rows, seconds)


def _finish(cfg: BuildConfig, inputs: BuildInputs, plan: BuildPlan, settings: dict, state, rows: list[dict],
            seconds: float) -> BuildResult:
    """Merge the shards' bank parts, draw the contact sheet, write the index (last)."""
    with writing(inputs.output / BANK_FILE):
        bank_record = merge_parts(inputs.output, [s.filename for s in plan.shards], inputs.round)
    infos = dict(state.kept)
    sizes = {(r["height"], r["width"]) for r in rows} | set(state.sizes)
    for r in rows:
        infos[r["filename"]] = ShardInfo(filename=r["filename"], num_samples=r["num_samples"], sha256=r["sha256"],
                                         size_bytes=r["size_bytes"])
    if len(sizes) != 1:
        raise RuntimeError(f"{inputs.output}: shards hold images of different sizes {sorted(sizes)}")
    if cfg.output.contact_sheet:
        with writing(inputs.output / CONTACT_SHEET_FILE):
            write_contact_sheet(inputs.output, plan, inputs, cfg.output.contact_sheet)
    index = DatasetIndex(
        class_names=list(inputs.class_names), image_size=sizes.pop(),
        shards=[infos[s.filename] for s in plan.shards], num_samples=plan.num_samples, name=cfg.output.name,
        created={"tool_version": __version__, "time": utc_now(), "round": inputs.round,
                 # Portable: what leaves this machine with the data set names no local path.
                 "generator": {"name": portable_path(settings["settings"]["generator"]["path"]),
                               "weights_sha256": next((r["generator_sha256"] for r in rows), state.generator_sha256)},
                 "license": {"dataset": cfg.output.license or cfg.generator.license,
                             "generator": cfg.generator.license, "source_terms": cfg.output.source_terms},
                 "checkpoint_sha256": inputs.checkpoint_sha256, "manifest_sha256": inputs.manifest_sha256,
                 "memory_bank": portable(bank_record, inputs.output),
                 "allocation": settings["settings"]["allocation"],
                 **({COPIES_KEY: True} if cfg.mode == "copy" else {}),
                 "config": portable(settings["config"], inputs.output)})
    with writing(f"{inputs.output} (its index.json, _info.json or README.md)"):
        write_index(inputs.output, index)
    remove_parts(inputs.output)      # after the index: an attempt before it still needed them
    return BuildResult(inputs.output, index, rendered=[r["filename"] for r in rows], kept=sorted(state.kept),
                       seconds=seconds, shard_seconds={r["filename"]: r["seconds"] for r in rows})


def round_budget(cfg: BuildConfig, num_hard: int) -> int:
    """The round's image count: ``budget``, capped per hard sample under the ``paper`` policy;
    ``balanced``, ``mixed`` and uniform targets always spend it."""
    if cfg.targets != "hard" or cfg.allocation.policy != "paper":
        return cfg.budget
    return effective_budget(cfg.budget, num_hard, cfg.max_renders_per_sample)


def build_round(directory: Path, cfg: BuildConfig, build: Callable[[BuildConfig], BuildResult] = run,
                will_retry: bool = False) -> tuple[BuildStatus, BuildResult]:
    """Build one trainer round folder with ``cfg`` and mark it in ``build_status.json``; return the
    status and the build's result (``build`` is :func:`run`; the watcher's tests pass their own).

    A failure is marked ``failed`` (``retrying`` when the caller ``will_retry``: a trainer waiting
    for the round keeps waiting) and raised.

    A kill leaves the status at ``building``; the next attempt resumes the round's shards.
    """
    # The output's lock first: a second build of this round (another watcher, a one-off build)
    # fails here, before it could mark the round of the build in progress.
    with output_lock(cfg.output.path):
        previous = read_status(directory)
        attempts = previous.attempts + 1 if previous is not None else 1
        round_number = int(directory.name) if directory.name.isdigit() else -1
        with writing(directory / STATUS_FILE):
            write_status(directory, BuildStatus(state="building", round=round_number, attempts=attempts))
        started = time.perf_counter()
        try:
            result = build(cfg)
        except BaseException as e:  # marked, then raised unchanged for the CLI's exit status
            if not isinstance(e, KeyboardInterrupt):   # an interrupt stays "building": resumable
                try:
                    write_status(directory, BuildStatus(state="retrying" if will_retry else "failed",
                                                        round=round_number, attempts=attempts, error=one_line(e)))
                except OSError as marking:   # a full disk: the build's own error is the one to report
                    _logger.warning("%s: cannot mark the round failed (%s)", directory, one_line(marking))
            raise
        with writing(directory / STATUS_FILE):
            status = write_status(directory, BuildStatus(state="done", round=round_number, attempts=attempts,
                                                         images=result.index.num_samples,
                                                         seconds=round(time.perf_counter() - started, 3)))
    return status, result


def build_and_mark(cfg: BuildConfig, round_dir: Optional[Path] = None,
                   pool: Optional[WorkerPool] = None) -> BuildResult:
    """Build ``cfg`` (with ``pool``'s workers, if given). When ``round_dir`` is a trainer round
    folder (it holds a manifest) and the output is its own ``shards/``, mark the round in
    ``build_status.json`` as the watcher does; without a manifest it is no round folder, and the
    pipeline's input checks name what is missing. (``actgen-build --round-dir`` and ``--serve``.)"""
    build = run if pool is None else functools.partial(run, pool=pool)
    if (round_dir is not None and (round_dir / MANIFEST_FILE).is_file()
            and Path(cfg.output.path).resolve() == (round_dir / SHARDS_DIR).resolve()):
        return build_round(round_dir, cfg, build)[1]
    return build(cfg)


def not_fired_fallback(cfg: BuildConfig, inputs: BuildInputs) -> BuildConfig:
    """A round the trainer did not fire (``header.selection.fired: false``, no samples) renders its
    budget text-to-image for classes drawn uniformly: before the classifier is competent its
    mistakes are noise, so the budget goes to class-balanced generation instead of being wasted
    or skipped (``targets: uniform``, ``mode: txt2img``, recorded in ``build.json``)."""
    if not round_not_fired(inputs.manifest):
        return cfg
    if cfg.mode == "copy":     # nothing rendered: copies of guide-pool images, classes drawn evenly
        _logger.info("round %d did not fire in the trainer (%s): copying %d guide-pool images, classes drawn "
                     "evenly", inputs.round, inputs.manifest.header.selection.get("reason"), cfg.budget)
        return dataclasses.replace(cfg, allocation=dataclasses.replace(cfg.allocation, policy="balanced",
                                                                       fill="train"))
    _logger.info("round %d did not fire in the trainer (%s): rendering %d images text-to-image for classes "
                 "drawn uniformly", inputs.round, inputs.manifest.header.selection.get("reason"), cfg.budget)
    return dataclasses.replace(cfg, targets="uniform", mode="txt2img")


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


def mode_counts(plan: BuildPlan) -> str:
    counts: dict[str, int] = {}
    for s in plan.samples:
        name = s.mode + ("+adv" if s.adversarial else "")
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
