"""The trainer's configuration: a frozen dataclass tree loaded from YAML, overridable by dotlist.

OmegaConf's structured configs reject unknown keys ("Key 'nme' not in 'ModelConfig'. Did you
mean: 'name'?") and mistyped values, naming the full key; ranges, enumerations and cross-field
rules are checked in ``__post_init__`` with a ``ValueError`` naming the key and the value.
Derived values (the resolved round schedule, the run directory) are computed by their users
and never written back onto the config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

from actgen.shards.config import check_value as _check, diff_keys, load_structured, to_dict, to_yaml
from actgen.shards.sources import DataSource

from .active_config import (CheckpointConfig, RoundsConfig, SelectionConfig, SelectionRule,  # noqa: F401  (sections)
                            SyntheticConfig)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


CONFIG_FILE = "config.yaml"
"""The resolved config inside a run directory (``--resume`` reads it back)."""

@dataclass(frozen=True)
class DataConfig:
    """Which images to train on and how they are split.

    Attributes:
        source: the labeled training data set (see ``actgen.shards.sources.DataSource``).
        test_source: a separate data set to report test accuracy on (same class names).
        test_fraction: share of ``source`` carved off as a test split (stratified, ``split_seed``)
            when there is no ``test_source``; 0 = no test split.
        holdout_fraction: share of ``source`` held out for the hard-sample search with
            ``rounds.search: holdout`` (paper: 10%), merged back into training at
            ``rounds.merge_epoch``. Default 0: the default search scores the training images.
        split_seed: ``random_state`` of the stratified splits; recorded in every manifest.
        decode_check_limit: before the run directory is created, decode every image of a source
            with at most this many rows, so that a missing, corrupt or oversized image is an
            error naming its sample id and not a failure mid-epoch (0 = never). Larger sources
            are checked as they are read; a run that stops on a bad image resumes once it is
            fixed.
    """

    source: DataSource = field(default_factory=DataSource)
    test_source: Optional[DataSource] = None
    test_fraction: float = 0.0
    holdout_fraction: float = 0.0
    split_seed: int = 42
    decode_check_limit: int = 20_000

    def __post_init__(self) -> None:
        _check(0.0 <= self.test_fraction < 1.0, "data.test_fraction", self.test_fraction, "a number in [0, 1)")
        _check(0.0 <= self.holdout_fraction < 1.0, "data.holdout_fraction", self.holdout_fraction,
               "a number in [0, 1)")
        _check(self.test_fraction + self.holdout_fraction < 1.0, "data.test_fraction + data.holdout_fraction",
               self.test_fraction + self.holdout_fraction, "less than 1 (some images must remain for training)")
        _check(not (self.test_source is not None and self.test_fraction > 0), "data.test_fraction",
               self.test_fraction, "0 when data.test_source is set (one test set, not two)")
        _check(self.decode_check_limit >= 0, "data.decode_check_limit", self.decode_check_limit, "an int >= 0")


@dataclass(frozen=True)
class InputConfig:
    """Image size, normalisation and augmentation (real and synthetic images alike).

    Attributes:
        image_size: side of the square model input; every image (real or synthetic) is resized
            to it by the transforms.
        mean, std: per-channel normalisation (RGB).
        interpolation: resize filter (timm names).
        crop: training crop: ``random_resized`` (timm RandomResizedCrop with ``scale``/``ratio``),
            ``pad`` (resize, then random crop with ``pad`` pixels of zero padding: the CIFAR
            recipe), or ``none`` (resize only).
        hflip: probability of a horizontal flip.
        color_jitter: timm colour jitter strength (``random_resized`` only; 0 = off).
        auto_augment: timm auto-augment spec such as ``rand-m9-mstd0.5`` (``random_resized``
            only), or null.
        re_prob, re_mode: timm random erasing probability and mode.
        eval_crop_pct: centre-crop share for evaluation (1.0 = resize only).
    """

    image_size: int = 32
    # Variable-length tuples so that a wrong length is reported by __post_init__ with the key
    # (OmegaConf's own length error does not name it).
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    crop: Literal["random_resized", "pad", "none"] = "random_resized"
    pad: int = 4
    scale: tuple[float, ...] = (0.08, 1.0)
    ratio: tuple[float, ...] = (0.75, 1.3333333333333333)
    hflip: float = 0.5
    color_jitter: float = 0.0
    auto_augment: Optional[str] = None
    re_prob: float = 0.0
    re_mode: Literal["const", "rand", "pixel"] = "pixel"
    eval_crop_pct: float = 1.0

    def __post_init__(self) -> None:
        _check(self.image_size >= 8, "input.image_size", self.image_size, "an int >= 8")
        _check(len(self.mean) == 3, "input.mean", self.mean, "3 numbers (RGB)")
        _check(len(self.std) == 3 and all(s > 0 for s in self.std), "input.std", self.std,
               "3 positive numbers (RGB)")
        _check(self.pad >= 0, "input.pad", self.pad, "an int >= 0")
        _check(len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1, "input.scale", self.scale,
               "[min, max] with 0 < min <= max <= 1")
        _check(len(self.ratio) == 2 and 0 < self.ratio[0] <= self.ratio[1], "input.ratio", self.ratio,
               "[min, max] with 0 < min <= max")
        _check(0.0 <= self.hflip <= 1.0, "input.hflip", self.hflip, "a probability in [0, 1]")
        _check(self.color_jitter >= 0, "input.color_jitter", self.color_jitter, "a number >= 0")
        _check(0.0 <= self.re_prob <= 1.0, "input.re_prob", self.re_prob, "a probability in [0, 1]")
        _check(0.0 < self.eval_crop_pct <= 1.0, "input.eval_crop_pct", self.eval_crop_pct, "a number in (0, 1]")
        if self.crop != "random_resized":
            _check(self.auto_augment is None, "input.auto_augment", self.auto_augment,
                   "null unless input.crop is 'random_resized' (timm's training transform)")
            _check(self.color_jitter == 0, "input.color_jitter", self.color_jitter,
                   "0 unless input.crop is 'random_resized' (timm's training transform)")


@dataclass(frozen=True)
class LoaderConfig:
    """DataLoader settings (per process).

    Attributes:
        batch_size: training images per step and process (paper: 128 per GPU).
        eval_batch_size: images per evaluation step.
        num_workers: loader worker processes (0 = load in the training process).
        persistent_workers: keep workers alive between epochs (only with ``num_workers > 0``).
        prefetch_factor: batches each worker loads ahead (only with ``num_workers > 0``).
        drop_last: drop the last incomplete training batch of an epoch.
        normalize: where images become normalised float32: ``workers`` (in the loader's
            workers), or ``device`` (workers hand over uint8, a quarter of the bytes; the
            training device normalises and randomly erases each batch, as timm's prefetcher).

    The training loader's workers persist across epochs (``persistent_workers``); the evaluation
    loaders' workers live for one pass, so a process holds at most twice ``num_workers``.
    """

    batch_size: int = 128
    eval_batch_size: int = 256
    num_workers: int = 0
    persistent_workers: bool = True
    prefetch_factor: int = 2
    drop_last: bool = True
    normalize: Literal["workers", "device"] = "workers"

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "loader.batch_size", self.batch_size, "an int >= 1")
        _check(self.eval_batch_size >= 1, "loader.eval_batch_size", self.eval_batch_size, "an int >= 1")
        _check(self.num_workers >= 0, "loader.num_workers", self.num_workers, "an int >= 0")
        _check(self.prefetch_factor >= 1, "loader.prefetch_factor", self.prefetch_factor, "an int >= 1")


@dataclass(frozen=True)
class ModelConfig:
    """The classifier, built with ``timm.create_model(name, num_classes=..., **kwargs)``.

    Attributes:
        name: timm model name (e.g. ``resnet18``, ``resnet10t``, ``test_resnet``), or a folder
            (``local-dir:PATH``: timm's ``config.json`` and weights, e.g. a run's ``final/``) or a
            Hugging Face model (``hf-hub:ORG/NAME[@REV]``, from the local cache unless
            ``allow_download``); ``pretrained`` then loads its weights, and bundles record its
            architecture name.
        initial_weights: local file or bundle directory to start from: a bundle written by a
            previous run (class names must match), a ``.safetensors`` file or a torch state dict.
        skip_head: load ``initial_weights`` without the classifier head (fine-tuning to a new
            label set); otherwise every key must match.
        pretrained: start from timm's pretrained weights for ``name`` (timm's own loader: a
            head of another size is dropped and initialised anew), from ``pretrained_file`` when
            set, else from timm's default source (a download: needs ``allow_download``).
        pretrained_file: a local weights file (``.safetensors``, ``.bin``, ``.pth``) timm loads
            with ``pretrained_cfg_overlay={"file": ...}``, e.g. another run's ``final/model.safetensors``.
        allow_download: let ``pretrained`` without a file download weights (off by default).
        drop_rate, drop_path_rate: timm dropout before the head / stochastic depth.
        kwargs: further ``timm.create_model`` keyword arguments; recorded in every bundle so the
            builder rebuilds the identical model.
    """

    name: str = "resnet18"
    initial_weights: Optional[str] = None
    skip_head: bool = False
    pretrained: bool = False
    pretrained_file: Optional[str] = None
    allow_download: bool = False
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(bool(self.name), "model.name", self.name, "a timm model name")
        _check(0.0 <= self.drop_rate < 1.0, "model.drop_rate", self.drop_rate, "a number in [0, 1)")
        _check(0.0 <= self.drop_path_rate < 1.0, "model.drop_path_rate", self.drop_path_rate, "a number in [0, 1)")
        reserved = {"num_classes", "pretrained", "pretrained_cfg_overlay", "drop_rate", "drop_path_rate"}
        reserved &= set(self.kwargs)
        _check(not reserved, "model.kwargs", sorted(reserved), "no keys the trainer sets itself")
        _check(self.pretrained_file is None or self.pretrained, "model.pretrained_file", self.pretrained_file,
               "set only with model.pretrained=true")
        _check(not (self.pretrained and self.initial_weights), "model.pretrained", self.pretrained,
               "false when model.initial_weights is set (one starting point)")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, built with ``timm.optim.create_optimizer_v2``.

    Attributes:
        opt: timm optimizer name (``momentum`` = SGD without Nesterov, as in the paper's CIFAR
            recipe; ``sgd`` is Nesterov SGD in timm; ``adamw``...).
        lr, weight_decay, momentum: as in timm.
        eps: optimizer epsilon (Adam family), or null for the optimizer's default.
        decay_norm_and_bias: also apply weight decay to biases and norm layers (paper's CIFAR
            recipe does; timm's default does not).
        clip_grad: gradient clipping threshold, or null for none.
        clip_mode: timm clipping mode.
    """

    opt: str = "momentum"
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    eps: Optional[float] = None
    decay_norm_and_bias: bool = True
    clip_grad: Optional[float] = None
    clip_mode: Literal["norm", "value", "agc"] = "norm"

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", self.lr, "a number > 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "a number >= 0")
        _check(self.eps is None or self.eps > 0, "optim.eps", self.eps, "null or a number > 0")
        _check(self.clip_grad is None or self.clip_grad > 0, "optim.clip_grad", self.clip_grad,
               "null or a number > 0")


@dataclass(frozen=True)
class SchedConfig:
    """Learning-rate schedule, built with ``timm.scheduler.create_scheduler_v2``.

    Attributes:
        sched: timm scheduler name (``cosine``, ``step``, ``multistep``, ``poly``, ``const``...).
        step_on: ``step`` updates the LR every optimizer step (paper's CIFAR recipe), ``epoch``
            once per epoch. Per-step progress is measured as a fraction of the epoch, so the
            synthetic images added by rounds do not stretch the schedule.
        min_lr, warmup_epochs, warmup_lr, decay_epochs, decay_rate: as in timm.
    """

    sched: str = "cosine"
    step_on: Literal["step", "epoch"] = "step"
    min_lr: float = 1e-6
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6
    decay_epochs: float = 30.0
    decay_rate: float = 0.1

    def __post_init__(self) -> None:
        _check(self.min_lr >= 0, "sched.min_lr", self.min_lr, "a number >= 0")
        _check(self.warmup_epochs >= 0, "sched.warmup_epochs", self.warmup_epochs, "an int >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """The epoch loop.

    Attributes:
        epochs: total epochs E.
        seed: global seed (each process adds its rank, like the paper).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: autocast dtype, or ``none`` for float32.
        channels_last: NHWC memory format for model and inputs (faster convolutions on GPUs).
        label_smoothing: cross-entropy smoothing (folded into the soft targets under mixup).
        mixup_alpha, cutmix_alpha, mixup_prob, mixup_switch_prob: timm Mixup (off when both
            alphas are 0).
        ema_decay: model EMA decay (timm ModelEmaV3), or null for no EMA.
        log_interval: steps between log lines and, in multi-process runs, between the checks
            that agree on a preemption's stopping step (the only host syncs inside an epoch).
        progress: show a tqdm bar on rank 0 (only when stderr is a terminal).
        tensorboard: also write each epoch's metrics as TensorBoard scalars to
            ``<run_dir>/tensorboard`` (rank 0; ``tensorboard --logdir <run_dir>/tensorboard``).
        precise_bn_steps: before each evaluation, while the run has taken fewer optimizer steps
            than this, recompute the BatchNorm running statistics from up to 1,024 training
            images (0 = never). BN's running averages (momentum 0.1) trail the weights by tens of
            steps: after a few steps on a small labeled set the eval-mode model scores near
            chance although training accuracy is high, and a round's "hard samples" are then the
            whole hold-out (measured: digits, 240 images, batch 32: test accuracy 10% -> 57%,
            84%, 92% after epochs 0-2 with the statistics recomputed).
        grad_accum_steps: micro-batches whose gradients add up to one optimizer step (the
            effective batch is ``loader.batch_size`` x this x the processes; DDP syncs once a
            step). The LR schedule stays on its grid of the epoch's batches.
        compile: ``torch.compile`` backend for the trained model (``inductor``, or ``aot_eager``
            to check a model compiles without a compiler toolchain); null: eager.
        sync_bn: BatchNorm statistics over all processes (timm's ``convert_sync_batchnorm``), in
            multi-process runs only (one process: nothing to synchronise).
        loggers: also log to ``wandb`` (Weights & Biases) and/or ``mlflow``: each epoch's
            metrics, the loss and learning rate at each log line, each round's contact sheet.
        logger_project: the W&B project or MLflow experiment (default: the run's ``name``).
    """

    epochs: int = 10
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["none", "bfloat16", "float16"] = "none"
    channels_last: bool = False
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    ema_decay: Optional[float] = None
    log_interval: int = 50
    progress: bool = True
    tensorboard: bool = False
    precise_bn_steps: int = 1000
    grad_accum_steps: int = 1
    compile: Optional[str] = None
    sync_bn: bool = False
    loggers: list[str] = field(default_factory=list)
    logger_project: Optional[str] = None

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", self.epochs, "an int >= 1")
        _check(self.grad_accum_steps >= 1, "train.grad_accum_steps", self.grad_accum_steps, "an int >= 1")
        _check(set(self.loggers) <= {"wandb", "mlflow"} and len(set(self.loggers)) == len(self.loggers),
               "train.loggers", self.loggers, "a list of distinct names from wandb, mlflow (TensorBoard: "
               "train.tensorboard)")
        _check(self.compile is None or (isinstance(self.compile, str) and self.compile.strip() != ""),
               "train.compile", self.compile, "null or a torch.compile backend name (inductor, aot_eager, ...)")
        _check(self.precise_bn_steps >= 0, "train.precise_bn_steps", self.precise_bn_steps, "an int >= 0")
        _check(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", self.label_smoothing, "a number in [0, 1)")
        _check(self.mixup_alpha >= 0, "train.mixup_alpha", self.mixup_alpha, "a number >= 0")
        _check(self.cutmix_alpha >= 0, "train.cutmix_alpha", self.cutmix_alpha, "a number >= 0")
        _check(0.0 <= self.mixup_prob <= 1.0, "train.mixup_prob", self.mixup_prob, "a probability in [0, 1]")
        _check(self.ema_decay is None or 0.0 < self.ema_decay < 1.0, "train.ema_decay", self.ema_decay,
               "null or a number in (0, 1)")
        _check(self.log_interval >= 1, "train.log_interval", self.log_interval, "an int >= 1")

    @property
    def mixup_active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass(frozen=True)
class Config:
    """Everything ``actgen-train`` needs; written resolved to ``<run_dir>/config.yaml``.

    Attributes:
        name: run name, used in the default ``run_dir``.
        run_dir: output directory; ``{name}`` is replaced by ``name``.
    """

    name: str = "actgen"
    run_dir: str = "runs/{name}"
    data: DataConfig = field(default_factory=DataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "name", self.name, "a non-empty name without '/'")
        _check(bool(self.run_dir), "run_dir", self.run_dir, "a folder (``{name}`` is replaced by the run's name)")
        epochs = self.train.epochs
        horizon, merge = self.rounds.resolve(epochs)
        if self.rounds.enabled:
            holdout_search = self.rounds.search == "holdout"
            _check(self.data.holdout_fraction > 0 or not holdout_search, "data.holdout_fraction",
                   self.data.holdout_fraction, "> 0 when rounds.enabled and rounds.search is 'holdout' (rounds "
                                               "search the hold-out for hard samples)")
            _check(horizon <= epochs, "rounds.horizon", horizon,
                   f"at most train.epochs = {epochs} (a shorter run: lower rounds.horizon and rounds.merge_epoch "
                   "with train.epochs, or null them for the paper's half of the epochs)")
            _check(horizon >= self.rounds.every, "rounds.horizon", horizon,
                   f"at least rounds.every = {self.rounds.every} (otherwise no round ever ends)")
            _check(merge >= horizon or not holdout_search, "rounds.merge_epoch", merge,
                   f"at least the horizon {horizon} (rounds evaluate the hold-out, so it cannot be merged before)")
        _check(merge <= epochs, "rounds.merge_epoch", merge,
               f"at most train.epochs = {epochs} (= never; a shorter run: lower rounds.merge_epoch with train.epochs)")
        if self.synthetic.mixing == "fraction":
            n = round(self.synthetic.fraction * self.loader.batch_size)
            _check(1 <= n < self.loader.batch_size, "synthetic.fraction", self.synthetic.fraction,
                   f"a share giving 1..{self.loader.batch_size - 1} synthetic images per batch of "
                   f"loader.batch_size = {self.loader.batch_size} (gives {n})")
        if self.train.mixup_active:
            _check(self.loader.batch_size % 2 == 0, "loader.batch_size", self.loader.batch_size,
                   "an even number when mixup/cutmix is on (timm Mixup pairs images)")
            _check(self.loader.drop_last, "loader.drop_last", self.loader.drop_last,
                   "true when mixup/cutmix is on (timm Mixup needs even batches)")

    def resolved_run_dir(self) -> Path:
        """``run_dir`` with ``{name}`` replaced by ``name``; nothing else in it is a placeholder
        (a folder name may hold braces)."""
        return Path(self.run_dir.replace("{name}", self.name))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                literal: Optional[Mapping[str, str]] = None) -> Config:
    """Load a YAML config over the defaults, then apply ``key.sub=value`` overrides.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown key, a mistyped value, a malformed override or a value out of
            range; the message names the file or the key.
    """
    return load_structured(Config, path, overrides, literal=literal)


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what ``<run_dir>/config.yaml`` holds)."""
    return to_yaml(cfg)


def config_to_dict(cfg: Config) -> dict:
    return to_dict(cfg)


def diff_configs(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    return diff_keys(to_dict(a), to_dict(b))
