"""``actgen-train``: parse, load the config, set up logging, call :func:`actgen.trainer.run.run`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from actgen.shards import __version__
from actgen.shards.errors import cli_errors
from actgen.shards.runtime import setup_logging


EPILOG = """\b
Examples:
  actgen-train --config configs/train-digits.yaml
  actgen-train --config configs/train-cifar10-5k.yaml --set train.epochs=20 --run-dir runs/c10
  actgen-train --run-dir runs/c10 --resume
  torchrun --nproc_per_node 2 -m actgen.trainer.cli --config configs/train-digits.yaml

\b
Every round r (see rounds.* in the config) writes, for actgen-build:
  <run-dir>/rounds/<r>/hard_samples.json   misclassified hold-out samples
  <run-dir>/rounds/<r>/checkpoint/         classifier bundle (timm + safetensors)
and from the next epoch on trains on the shards found at synthetic.pattern.
"""


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.version_option(__version__, "--version", prog_name="actgen-train", message="%(prog)s %(version)s")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="YAML config (see configs/train-*.yaml). Optional with --resume: the run's own "
                   "config.yaml is used.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.epochs=4 --set model.name=resnet10t (repeatable).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (default: the config's run_dir).")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir exactly from its last.pt.")
@click.option("--stop-after", type=click.IntRange(min=1), metavar="N",
              help="Stop once N epochs are complete (resumable later with --resume).")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@click.option("-v", "--verbose", "--debug", "verbose", is_flag=True,
              help="Debug logging; tracebacks on stderr (else a failure's goes to a log file).")
def main(config_path: Optional[Path], overrides: tuple[str, ...], run_dir: Optional[Path], resume: bool,
         stop_after: Optional[int], print_config: bool, verbose: bool) -> None:
    """Train an image classifier in active-generation rounds (ActGen).

    Trains a timm model on a labeled image data set with a stratified hold-out. After each
    round it writes the hold-out samples the model gets wrong and a checkpoint bundle; the
    synthetic images actgen-build renders from them join training in the next round. Writes
    config.yaml, last.pt, metrics.csv/jsonl and summary.json into the run directory.
    """
    setup_logging(verbose)
    with cli_errors("actgen-train", verbose):
        cfg = _load(config_path, overrides, run_dir, resume)
        if print_config:
            from .config import config_to_yaml

            click.echo(config_to_yaml(cfg), nl=False)
            return
        from .run import run

        run(cfg, resume=resume, stop_after=stop_after)

def _load(config_path: Optional[Path], overrides: tuple[str, ...], run_dir: Optional[Path], resume: bool):
    from .config import CONFIG_FILE, load_config

    literal = {"run_dir": str(run_dir)} if run_dir is not None else {}     # taken as given, never interpolated
    if config_path is None:
        if not (resume and run_dir is not None):
            raise click.UsageError("--config is required (or --resume with --run-dir)")
        config_path = run_dir / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: not found; is {run_dir} a run directory?")
    return load_config(config_path, list(overrides), literal=literal)


if __name__ == "__main__":  # torchrun -m actgen.trainer.cli ...
    main()
