"""The run directory: what may start, restart or resume in it.

Restarts: a directory without ``last.pt`` holds a run that stopped before its first checkpoint
(killed, or stopped on a bad image); a rerun of the same config, or ``--resume``, starts it over
in place. A directory with ``last.pt`` is only ever continued with ``--resume``. A resume refuses
a data set with another fingerprint, with one exception: the run stopped on an image that does
not decode (``data_errors.json`` names it, with the fingerprint it had), and the rows and labels
are unchanged, i.e. the images were fixed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from actgen.shards.atomic import atomic_write_text
from actgen.shards.errors import FormatError
from actgen.shards.sources import LabeledImages

from .checkpoint import CHECKPOINT_FILE, load_checkpoint
from .config import CONFIG_FILE, Config, diff_configs, load_config
from .samples import SampleError

_logger = logging.getLogger(__name__)

DATA_ERRORS_FILE = "data_errors.json"

# Settings that may change when a run is resumed: they do not affect what is computed.
RESUMABLE_CHANGES = {"checkpoint.keep_rounds", "loader.num_workers", "loader.persistent_workers", "loader.prefetch_factor",
                     "loader.eval_batch_size", "train.log_interval", "train.progress", "synthetic.on_missing",
                     "synthetic.timeout_s", "synthetic.poll_s", "data.decode_check_limit", "run_dir",
                     # with another number of processes, so that the global batch stays (checked then)
                     "train.grad_accum_steps"}


def run_dir_state(cfg: Config, run_dir: Path, resume: bool) -> Optional[dict]:
    """The checkpoint to resume from, or None to start (a fresh or a restarted run).

    A directory without ``last.pt`` but with a run's ``config.yaml`` holds a run that stopped
    before its first checkpoint (a bad received set, a typo found at epoch 0): it is taken over
    and started over, with these settings or corrected ones (the changed keys are logged), with or
    without ``--resume``; its files are replaced once the new run's inputs are validated
    (:func:`clear_stopped_run`). A directory with a checkpoint is only continued (``--resume``),
    never overwritten.
    """
    checkpoint = run_dir / CHECKPOINT_FILE
    if checkpoint.is_file():
        if not resume:
            raise ValueError(f"run directory {run_dir} already exists and holds a checkpoint ({CHECKPOINT_FILE}); "
                             "pass --resume to continue it or choose another --run-dir")
        state = load_checkpoint(checkpoint)
        _check_resume_config(cfg, run_dir)
        return state
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / CONFIG_FILE).is_file():  # not a run of ours: never touched
            if resume:
                raise FileNotFoundError(f"{checkpoint}: no checkpoint to resume from")
            raise ValueError(f"run directory {run_dir} already exists and is not empty; pass --resume to continue "
                             "it or choose another --run-dir")
        changed = _changed_keys(cfg, run_dir)
        _logger.warning("%s holds a run that stopped before its first checkpoint (no %s); starting it over%s",
                        run_dir, CHECKPOINT_FILE, f" with other settings for {changed}" if changed else "")
        return None
    if resume:
        raise FileNotFoundError(f"{checkpoint}: no checkpoint to resume from")
    return None


def _changed_keys(cfg: Config, run_dir: Path) -> list[str]:
    """The keys ``cfg`` sets otherwise than the run in ``run_dir`` (all of them when its config no
    longer loads: it is replaced anyway)."""
    try:
        return diff_configs(load_config(run_dir / CONFIG_FILE), cfg)
    except (ValueError, OSError):
        return ["(its config.yaml does not load)"]


# What a run writes into its folder; a stopped run's are removed when a new run takes it over.
RUN_FILES = ("config.yaml", "metrics.csv", "metrics.jsonl", "summary.json", "data_errors.json", "train.log",
             "build.log")
RUN_FOLDERS = ("rounds", "synthetic", "final", "tensorboard")


def clear_stopped_run(run_dir: Path) -> None:
    """Remove what a run that stopped before its first checkpoint left in ``run_dir`` (only the
    run's own files and folders; anything else there stays)."""
    import shutil

    if (run_dir / CHECKPOINT_FILE).exists() or not (run_dir / CONFIG_FILE).is_file():
        return
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        if (run_dir / name).is_dir() and not (run_dir / name).is_symlink():
            shutil.rmtree(run_dir / name)


def _check_resume_config(cfg: Config, run_dir: Path) -> None:
    saved_path = run_dir / CONFIG_FILE
    saved = load_config(saved_path)
    changed = [k for k in diff_configs(saved, cfg) if k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"{saved_path}: the run was started with other settings for {changed}; "
                         "resume with the run's own config (leave out --config)")


def labels_sha256(images: LabeledImages) -> str:
    """sha256 of what a fix of images must leave alone: class names, row count and every label."""
    h = hashlib.sha256(json.dumps(list(images.class_names)).encode())
    h.update(f"rows={len(images)};".encode())
    h.update(np.asarray(images.labels(), dtype="<i8").tobytes())
    return h.hexdigest()


def check_fixed_images(state: dict, images: LabeledImages, run_dir: Path, path: str) -> None:
    """Accept a changed data-set fingerprint on resume only as a fix of the image the run stopped on.

    Raises:
        FormatError: any other change (naming both fingerprints and the rule).
    """
    before, now = state["dataset_fingerprint"], images.fingerprint
    record = _read_data_error(run_dir)
    if (record is not None and record.get("dataset_fingerprint") == before
            and state.get("labels_sha256") == labels_sha256(images)):
        _logger.warning("data set %r changed since the checkpoint (fingerprint %s -> %s) after the run stopped on a "
                        "bad image (%s); same rows and labels, so resuming with the fixed images", path, before[:12],
                        now[:12], record.get("error", "?"))
        return
    raise FormatError(str(run_dir / CHECKPOINT_FILE),
                      f"checkpoint was trained on data set {before[:12]}, data.source {path!r} is {now[:12]}; a "
                      f"resume takes changed data only as a fix of the image the run stopped on (recorded in "
                      f"{DATA_ERRORS_FILE}), with the same rows and labels")


@contextlib.contextmanager
def recording_bad_images(run_dir: Path, images: LabeledImages, epoch: Callable[[], int]) -> Iterator[None]:
    """On a SampleError (an image that does not decode) write ``data_errors.json``: which image,
    at which epoch, with which data-set fingerprint, so that a resume accepts the fixed data."""
    try:
        yield
    except SampleError as e:
        record = {"dataset_fingerprint": images.fingerprint, "epoch": epoch(), "error": str(e)}
        try:
            atomic_write_text(run_dir / DATA_ERRORS_FILE, json.dumps(record, indent=2) + "\n")
        except OSError as write_error:
            _logger.warning("cannot record the bad image in %s: %s", run_dir / DATA_ERRORS_FILE, write_error)
        raise


def _read_data_error(run_dir: Path) -> Optional[dict]:
    path = run_dir / DATA_ERRORS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_global_batch(saved, saved_processes: int, processes: int, global_batch: int, grad_accum_steps: int,
                       checkpoint: Path) -> None:
    """A resume keeps the checkpoint's global batch (images per optimizer step over all processes):
    ValueError naming the ``train.grad_accum_steps`` that keeps it, or, on another number of
    processes, a warning that the run continues but not bit for bit. ``saved`` is absent (None) in
    checkpoints of older versions, which resume only on their own number of processes."""
    if isinstance(saved, int) and saved != global_batch:
        per_process = global_batch // max(1, grad_accum_steps)
        fix = f"; train.grad_accum_steps={saved // per_process} keeps it" if saved % per_process == 0 else ""
        raise ValueError(f"{checkpoint}: written with a global batch of {saved} images per step ({saved_processes} "
                         f"process(es)); resumed with {global_batch} (loader.batch_size x {processes} process(es) x "
                         f"train.grad_accum_steps){fix}")
    if saved_processes != processes:
        if not isinstance(saved, int):
            raise ValueError(f"{checkpoint}: written by {saved_processes} process(es), resumed with {processes}; a "
                             "checkpoint of this version records no global batch, so only the same number of "
                             "processes resumes it")
        # The same global batch, so the schedule and the optimizer go on as they were; the data
        # order within an epoch and the random streams are no longer those of an uninterrupted run.
        _logger.warning("resuming a run of %d process(es) on %d with the same global batch (%d images a step): it "
                        "continues, but not bit for bit as an uninterrupted run would", saved_processes, processes,
                        global_batch)
