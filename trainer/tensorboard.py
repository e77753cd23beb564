"""Each epoch's metrics as TensorBoard scalars (``train.tensorboard``), beside ``metrics.jsonl``.

One writer per run on rank 0, in ``<run_dir>/tensorboard``; a resumed run purges the events past
its checkpoint, so the curves show each epoch once. ``tensorboard --logdir <run_dir>/tensorboard``.
"""
from __future__ import annotations

from pathlib import Path

TENSORBOARD_DIR = "tensorboard"

# metrics.jsonl column -> scalar tag (grouped the way TensorBoard's dashboard lays them out).
SCALARS = {
    "loss": "train/loss", "lr": "train/lr", "train_acc": "train/accuracy",
    "holdout_acc": "eval/holdout_accuracy", "test_acc": "eval/test_accuracy",
    "test_top5": "eval/test_top5_accuracy", "ema_test_acc": "eval/ema_test_accuracy",
    "synthetic_share": "synthetic/share_of_epoch", "synthetic_set_share": "synthetic/share_of_training_set",
    "synthetic_pool": "synthetic/pool_images", "hard_samples": "rounds/hard_samples",
    "images_per_s": "speed/images_per_s",
}


def row_scalars(row: dict) -> dict[str, float]:
    """A metrics row's measured values (not missing, not NaN) under their scalar tags."""
    return {tag: float(row[column]) for column, tag in SCALARS.items()
            if isinstance(row.get(column), (int, float)) and row[column] == row[column]}


class TensorBoardLog:
    """Writes one metrics row per epoch (step = epoch); a no-op when disabled."""

    def __init__(self, run_dir: str | Path, enabled: bool, next_epoch: int = 0):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter   # needs the tensorboard package

            self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR),
                                        purge_step=next_epoch if next_epoch else None)

    def append(self, row: dict) -> None:
        if self.writer is None:
            return
        for tag, value in row_scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=int(row["epoch"]))
        self.writer.flush()

    def step(self, step: int, scalars: dict[str, float]) -> None:
        """Scalars of one log line (step = optimizer step)."""
        if self.writer is None:
            return
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def image(self, tag: str, path: Path, round: int) -> None:
        """A PNG (a round's contact sheet) at step ``round``."""
        if self.writer is None:
            return
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            self.writer.add_image(tag, np.asarray(im.convert("RGB")), global_step=round, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
