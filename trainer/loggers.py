"""Where a run's numbers go beside ``metrics.jsonl``: TensorBoard (``train.tensorboard``), Weights &
Biases and MLflow (``train.loggers``), behind one interface on rank 0.

Each gets every epoch's metrics row (step = epoch), the training loss and learning rate at every
log line (step = optimizer step), and each round's contact sheet (its hard samples beside their
renders) when the round's data set joins training. A resumed run continues the same W&B or MLflow
run (its id is kept in the run folder).
"""
from __future__ import annotations

import logging
from pathlib import Path

from .tensorboard import SCALARS, TensorBoardLog, row_scalars

_logger = logging.getLogger(__name__)

WANDB_ID_FILE = ".wandb-run-id"
MLFLOW_ID_FILE = ".mlflow-run-id"


def _flat(config: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:500]      # MLflow's bound on a parameter's value
    return out


class WandbLog:
    """A W&B run (``wandb.init``: project ``train.logger_project`` or the run's name, the resolved
    config, ``dir`` the run folder); offline with ``WANDB_MODE=offline`` as W&B reads it."""

    def __init__(self, project: str, name: str, run_dir: Path, config: dict):
        import wandb

        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
        self.wandb = wandb
        self.run = wandb.init(project=project, name=name, dir=str(run_dir), config=config, id=run_id, resume="allow")
        id_file.write_text(run_id)
        # Two x axes: epochs for the epoch rows, optimizer steps for the log lines.
        self.run.define_metric("epoch")
        self.run.define_metric("step")
        for tag in SCALARS.values():
            self.run.define_metric(tag, step_metric="epoch")
        self.run.define_metric("train/step_*", step_metric="step")

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        self.run.log({"epoch": epoch, **scalars})

    def step(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log({"step": step, **scalars})

    def image(self, tag: str, path: Path, round: int) -> None:
        self.run.log({tag: self.wandb.Image(str(path), caption=f"round {round}")})

    def close(self) -> None:
        self.run.finish()


class MlflowLog:
    """An MLflow run in experiment ``train.logger_project`` (or the run's name), at the tracking URI
    MLflow reads (``MLFLOW_TRACKING_URI``; default ``./mlruns``); the resolved config as parameters."""

    def __init__(self, project: str, name: str, run_dir: Path, config: dict):
        import mlflow

        id_file = run_dir / MLFLOW_ID_FILE
        self.mlflow = mlflow
        if id_file.is_file():
            mlflow.start_run(run_id=id_file.read_text().strip())
        else:
            mlflow.set_experiment(project)
            run = mlflow.start_run(run_name=name)
            id_file.write_text(run.info.run_id)
            params = _flat(config)
            keys = sorted(params)
            for i in range(0, len(keys), 100):           # MLflow's batch bound
                mlflow.log_params({k: params[k] for k in keys[i:i + 100]})

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        self.mlflow.log_metrics(scalars, step=epoch)

    def step(self, step: int, scalars: dict[str, float]) -> None:
        self.mlflow.log_metrics(scalars, step=step)

    def image(self, tag: str, path: Path, round: int) -> None:
        self.mlflow.log_artifact(str(path), artifact_path=f"{tag}/round-{round}")

    def close(self) -> None:
        self.mlflow.end_run()


class RunLoggers:
    """Every logger the config asks for, on rank 0 (``enabled``); a no-op elsewhere or when none is."""

    def __init__(self, cfg, run_dir: str | Path, enabled: bool, next_epoch: int = 0):
        run_dir = Path(run_dir)
        self.board = TensorBoardLog(run_dir, cfg.train.tensorboard and enabled, next_epoch)
        self.others: list = []
        if not enabled:
            return
        from .config import config_to_dict

        project, config = cfg.train.logger_project or cfg.name, config_to_dict(cfg)
        kinds = {"wandb": WandbLog, "mlflow": MlflowLog}
        for name in cfg.train.loggers:
            self.others.append(kinds[name](project, run_dir.name, run_dir, config))

    def append(self, row: dict) -> None:
        """One epoch's metrics row."""
        self.board.append(row)
        scalars = row_scalars(row)
        for log in self.others:
            log.epoch(int(row["epoch"]), scalars)

    def step(self, step: int, loss: float, lr: float) -> None:
        """A log line's training loss (mean over its steps) and learning rate."""
        scalars = {"train/step_loss": loss, "train/step_lr": lr}
        self.board.step(step, scalars)
        for log in self.others:
            log.step(step, scalars)

    def round_image(self, run_dir: Path, round: int) -> None:
        """A round's contact sheet (hard samples beside their renders), when its build drew one."""
        from actgen.shards.rounds import ROUNDS_DIR, SHARDS_DIR

        path = Path(run_dir) / ROUNDS_DIR / str(round) / SHARDS_DIR / "contact_sheet.png"
        if not path.is_file():
            return
        self.board.image("rounds/contact_sheet", path, round)
        for log in self.others:
            log.image("rounds/contact_sheet", path, round)

    def close(self) -> None:
        self.board.close()
        for log in self.others:
            try:
                log.close()
            except Exception as e:        # a logger's service gone: the run's own outputs are written
                _logger.warning("closing %s: %s", type(log).__name__, e)
