"""``actgen-fit-generator``: parse, load the config, set up logging, call :func:`actgen.fitting.fit.run`
(or :func:`actgen.fitting.lora.run_lora` with ``--lora``)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional

import click

from actgen.shards.config import to_yaml

from actgen.shards import __version__
from actgen.shards.runtime import add_log_file, remove_log_file
from actgen.shards.errors import cli_errors
from actgen.shards.runtime import setup_logging

from .config import CHECKPOINT, LORA_CHECKPOINT


EPILOG = """\b
Examples:
  actgen-fit-generator --config configs/fit-digits.yaml
  actgen-fit-generator --config configs/fit-digits.yaml --output /tmp/g --set train.steps=200
  actgen-fit-generator --config configs/fit-digits.yaml --resume      # after an interruption
  actgen-fit-generator --lora --output /tmp/g --set base=/models/sd21-base --set steps=2000
  actgen-fit-generator --lora --output /tmp/g --set base=/models/sd21-base --set steps=2000 --resume

\b
The output directory is a Stable Diffusion-layout generator (unet/ vae/ text_encoder/ tokenizer/
scheduler/) plus fit_record.json, samples/step-*.png (one row per class) and {checkpoint}
(with --lora: unet_lora/, the adapter alone, and {lora_checkpoint}).
Build with it: actgen-build ... --set generator.path=OUTPUT --set generator.attention_resolution=R
(R is in fit_record.json, builder_settings).
""".format(checkpoint=CHECKPOINT, lora_checkpoint=LORA_CHECKPOINT)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.version_option(__version__, "--version", prog_name="actgen-fit-generator", message="%(prog)s %(version)s")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="YAML config (see configs/fit-*.yaml); defaults when omitted.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), help="Generator directory.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.steps=500 (repeatable).")
@click.option("--resume", is_flag=True, help=f"Continue from OUTPUT/{CHECKPOINT} (--lora: OUTPUT/{LORA_CHECKPOINT}).")
@click.option("--lora", is_flag=True, help="LoRA-fine-tune an existing SD 1.x/2.x generator instead "
              "(config keys: actgen.fitting.config.LoraFitConfig, e.g. --set base=/models/sd21-base).")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@click.option("-v", "--verbose", "--debug", "verbose", is_flag=True,
              help="Debug logging; tracebacks on stderr (else a failure's goes to a log file).")
def main(config_path: Optional[Path], output: Optional[Path], overrides: tuple[str, ...], resume: bool,
         lora: bool, print_config: bool, verbose: bool) -> None:
    """Fit a small text-conditional diffusion model on a labeled data set, from scratch.

    Trains a pixel-space UNet with cross-attention to a CLIP text encoder on prompts made from the
    class names (with prompt dropout, for classifier-free guidance), keeps an EMA of the weights,
    writes per-class sample grids and checkpoints, and saves a generator the builder loads.
    """
    setup_logging(verbose)
    with cli_errors("actgen-fit-generator", verbose, bad_input=(ValueError, OSError), failures=(),
                    interrupted="interrupted; rerun with --resume to continue from the last checkpoint"):
        literal = {"output": str(output)} if output is not None else {}     # taken as given, never interpolated
        if lora:
            from .config import load_lora_config
            from .lora import run_lora

            cfg = _load(load_lora_config, config_path, overrides, literal, print_config)
            if print_config:
                click.echo(to_yaml(cfg), nl=False)
                return
            with _log_file(Path(cfg.output)):
                result = run_lora(cfg, resume=resume)
            click.echo(f"{result.output}: LoRA fine-tuned in {result.step} steps "
                       f"(final loss {result.losses[-1]:.4f}, {result.seconds:.0f} s)")
            return
        from .config import load_fit_config
        from .fit import run

        cfg = _load(load_fit_config, config_path, overrides, literal, print_config)
        if print_config:
            click.echo(to_yaml(cfg), nl=False)
            return
        with _log_file(Path(cfg.output)):
            result = run(cfg, resume=resume)
        click.echo(f"{result.output}: generator fitted in {result.step} steps "
                   f"(final loss {result.losses[-1]:.4f}, {result.seconds:.0f} s)")


def _load(loader, config_path, overrides, literal: dict, print_config: bool):
    """The config; for ``--print-config`` an output folder not given is shown as such."""
    try:
        return loader(config_path, overrides, literal=literal)
    except ValueError as e:
        if not print_config or "'output'" not in str(e) or "output" in literal:
            raise
        return loader(config_path, overrides, literal={**literal, "output": "<--output not given>"})


@contextlib.contextmanager
def _log_file(output: Path) -> Iterator[None]:
    """The fit keeps its own log, ``OUTPUT/fit.log`` (appended on resume)."""
    output.mkdir(parents=True, exist_ok=True)
    log = output / "fit.log"
    add_log_file(log)
    try:
        yield
    finally:
        remove_log_file(log)


if __name__ == "__main__":  # python -m actgen.fitting.cli ...
    main()
