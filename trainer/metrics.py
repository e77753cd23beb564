"""Per-epoch metrics next to the checkpoints: ``metrics.csv`` and ``metrics.jsonl`` (same rows)."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

from actgen.shards.atomic import atomic_write_text
from actgen.shards.errors import writing

_logger = logging.getLogger(__name__)


COLUMNS = (
    "epoch",                 # 0-indexed
    "loss",                  # mean training loss
    "lr",                    # learning rate at the end of the epoch
    "train_acc",             # top-1 on the (augmented) training batches, against the hard labels
    "holdout_acc",           # top-1 on the hold-out (empty once it is merged into training)
    "test_acc",              # top-1 on the test split / source (empty without one)
    "test_top5",             # top-5 on it (empty with 5 classes or fewer)
    "ema_test_acc",          # the EMA model's test top-1 (empty without EMA or test set)
    "round",                 # the round that ended after this epoch (empty if none)
    "hard_samples",          # that round's hard samples
    "real_images",           # real training images available this epoch
    "synthetic_pool",        # synthetic images in the pool this epoch
    "synthetic_seen",        # synthetic images trained on this epoch (all ranks)
    "synthetic_seen_total",  # ... since the start of the run
    "synthetic_share",       # synthetic_seen / images: the synthetic share of this epoch's batches
    "synthetic_set_share",   # synthetic_pool / (real_images + synthetic_pool): share of the training set
    "images",                # images trained on this epoch (all ranks)
    "images_per_s",          # training throughput (all ranks, excluding evaluation)
    "epoch_time_s",          # wall time of the epoch including evaluation and round output
)


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsLog:
    """Appends one row per epoch; on resume, rows of epochs that will be re-run are dropped."""

    def __init__(self, run_dir: str | Path):
        self.csv_path = Path(run_dir) / "metrics.csv"
        self.jsonl_path = Path(run_dir) / "metrics.jsonl"

    def rows(self) -> list[dict]:
        if not self.jsonl_path.is_file():
            return []
        return [json.loads(line) for line in self.jsonl_path.read_text().splitlines() if line.strip()]

    def truncate(self, next_epoch: int) -> None:
        """Keep only rows of epochs before ``next_epoch`` (a resumed run re-runs the rest)."""
        self._write([r for r in self.rows() if r["epoch"] < next_epoch])

    def append(self, row: dict[str, Any]) -> None:
        unknown = set(row) - set(COLUMNS)
        assert not unknown, f"metrics row has unknown columns {sorted(unknown)}"
        self._write(self.rows() + [{c: _clean(row.get(c)) for c in COLUMNS}])

    def _write(self, rows: list[dict]) -> None:
        # Rewritten whole (a few KB) and atomically, so a crash never leaves a torn last line.
        with writing(self.jsonl_path):
            atomic_write_text(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in rows))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: "" if r.get(c) is None else r[c] for c in COLUMNS})
        with writing(self.csv_path):
            atomic_write_text(self.csv_path, out.getvalue())


def pct(value: Optional[float]) -> str:
    """A share as a percentage for log lines; "-" for a missing or NaN value."""
    return "-" if value is None or value != value else f"{100 * value:.2f}%"


def log_epoch(row: dict, epochs: int) -> None:
    """The one log line per epoch."""
    _logger.info("epoch %d/%d done: loss %.4f, train %s, hold-out %s, test %s | pool %d synthetic, %d seen "
                 "(%s of the epoch) | %.0f img/s, %.1f s", row["epoch"], epochs, row["loss"], pct(row["train_acc"]),
                 pct(row["holdout_acc"]), pct(row["test_acc"]), row["synthetic_pool"], row["synthetic_seen"],
                 pct(row.get("synthetic_share")), row["images_per_s"], row["epoch_time_s"])
