"""Process-level helpers every ActGen program shares: logging set-up and device choice.

They live in the contract package because it is the one package all programs import; neither
helper imports torch at module level, so a CLI's ``--help`` stays torch-free.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Optional

# Libraries that log at INFO about things a user of ActGen never needs to see.
_NOISY = ("PIL", "datasets", "fsspec", "urllib3", "filelock", "timm", "diffusers", "transformers", "ray",
          "ray.data", "matplotlib", "huggingface_hub", "httpx")


def setup_logging(verbose: bool = False) -> None:
    """One logging format for every CLI, on stderr.

    Under ``torchrun`` (``RANK`` > 0) the other ranks log warnings only, tagged with their rank:
    rank 0 tells the story.
    """
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO if rank == 0 else logging.WARNING
    tag = f"[rank {rank}] " if rank else ""
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s",
                        datefmt=DATE_FORMAT, stream=sys.stderr, force=True)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not progress_bars():
        # A log file or a pipe: no carriage-return bars from any library (tqdm reads TQDM_*
        # defaults from the environment; datasets and huggingface_hub read their own switches
        # at import). ActGen's own progress is one log line per interval.
        for variable in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(variable, "1")


DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def progress_bars() -> bool:
    """Whether progress bars are wanted: only when stderr is a terminal."""
    return sys.stderr.isatty()


class _LogFileHandler(logging.FileHandler):
    """A run's log file: if it cannot be written (a full disk, a file-size limit), it detaches
    itself quietly; the terminal's log and the program's own error handling are unaffected."""

    def handleError(self, record: logging.LogRecord) -> None:
        logging.getLogger().removeHandler(self)
        try:
            self.close()
        except OSError:
            pass


def add_log_file(path: str | os.PathLike) -> Optional[logging.Handler]:
    """Also write the log to ``path`` (appended; the same format as the terminal's), e.g. a run's
    ``train.log``; the handler, or None when it is already attached. The folder must exist."""
    path = os.path.abspath(path)
    root = logging.getLogger()
    for h in root.handlers:
        if isinstance(h, logging.FileHandler) and h.baseFilename == path:
            return None
    handler = _LogFileHandler(path, encoding="utf-8")
    stream = next((h for h in root.handlers if not isinstance(h, logging.FileHandler)), None)
    handler.setFormatter(stream.formatter if stream is not None and stream.formatter is not None
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", DATE_FORMAT))
    handler.setLevel(root.level)
    root.addHandler(handler)
    return handler


@contextlib.contextmanager
def run_log(path: str | os.PathLike | None):
    """Within the block, also write the log to ``path`` (None: nowhere else); its folder must exist."""
    if path is None or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        yield
        return
    add_log_file(path)
    try:
        yield
    finally:
        remove_log_file(path)


def remove_log_file(path: str | os.PathLike) -> None:
    """Detach and close the handler :func:`add_log_file` attached for ``path`` (if any)."""
    path = os.path.abspath(path)
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler) and h.baseFilename == path:
            root.removeHandler(h)
            h.close()


def resolve_device(preference: str, has_gpu: Optional[bool] = None, key: str = "device") -> str:
    """``auto`` -> ``cuda`` when a GPU is available, else ``cpu``.

    Args:
        preference: ``auto``, ``cpu`` or ``cuda``.
        has_gpu: whether the process (or the Ray cluster) that will run the work has a GPU;
            None asks torch about this process.
        key: the config key, for the error.

    Raises:
        RuntimeError: ``cuda`` was asked for and no GPU is available.
        ValueError: an unknown preference.
    """
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"config key {key!r} = {preference!r}: expected 'auto', 'cpu' or 'cuda'")
    if preference == "cpu":
        return "cpu"
    if has_gpu is None:
        import torch

        has_gpu = torch.cuda.is_available()
    if preference == "cuda" and not has_gpu:
        raise RuntimeError(f"config key {key!r} = 'cuda': no CUDA device is available")
    return "cuda" if has_gpu else "cpu"


# Optional parts of the install: the package a feature needs, and the extra that brings it.
EXTRAS = {"peft": "lora", "tensorboard": "tensorboard", "s3fs": "s3", "gcsfs": "gcs", "wandb": "wandb", "mlflow": "mlflow"}
SCHEME_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


def require(package: str, key: str, value: object = True) -> None:
    """ValueError naming the config key and the ``pip install`` line when the optional ``package``
    that ``key`` needs is not installed (checked before any work, never half way through a run)."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        extra = EXTRAS.get(package)
        install = f"pip install 'actgen[{extra}]'" if extra else f"pip install {package}"
        raise ValueError(f"config key '{key}' = {value!r} needs the {package} package, which is not installed: "
                         f"{install}")


def require_for_location(location: str, key: str) -> None:
    """:func:`require` for the file-system package an object-store location's scheme needs."""
    scheme = str(location).split("://", 1)[0].lower() if "://" in str(location) else ""
    if scheme in SCHEME_PACKAGES:
        require(SCHEME_PACKAGES[scheme], key, location)
