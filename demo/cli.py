"""``actgen-demo``: parse, load the demo config, set up logging, call :func:`actgen.demo.run.run`."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from actgen.shards import __version__
from actgen.shards.runtime import add_log_file, remove_log_file
from actgen.shards.errors import cli_errors
from actgen.shards.runtime import setup_logging

from .config import load_demo_config

EPILOG = """\b
Examples:
  actgen-demo                                        # configs/demo.yaml: the embedded digits
  actgen-demo --set output=runs/demo2 --set baseline=false
  actgen-demo --set 'train_overrides=["train.epochs=10"]'

\b
Writes into OUTPUT:
  active/     the actgen-train run with inline builds (rounds/<r>/shards: what was rendered)
  baseline/   the same run on real images only
  report.md   with accuracy.png and hard_vs_rendered.png
The generator directory is reused on later runs; delete it to fit again.
"""


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.version_option(__version__, "--version", prog_name="actgen-demo", message="%(prog)s %(version)s")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              default="configs/demo.yaml", show_default=True, help="Demo config (see configs/demo.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a demo config value, e.g. --set output=runs/demo2 --set baseline=false.")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@click.option("-v", "--verbose", "--debug", "verbose", is_flag=True,
              help="Debug logging; tracebacks on stderr (else a failure's goes to a log file).")
def main(config_path: Path, overrides: tuple[str, ...], print_config: bool, verbose: bool) -> None:
    """Run the whole ActGen loop on this machine and write a report.

    Fits (or reuses) a small generator, trains a classifier in rounds while actgen-build renders
    images near each round's hard samples, trains the same classifier on real images only, and
    writes OUTPUT/report.md with an accuracy plot and the hard samples beside their renderings.
    A rerun picks up where an interrupted one stopped.
    """
    setup_logging(verbose)
    with cli_errors("actgen-demo", verbose, interrupted="interrupted; rerun the same command to continue"):
        from .run import run

        cfg = load_demo_config(config_path, overrides)
        if print_config:
            from actgen.shards.config import to_yaml

            click.echo(to_yaml(cfg), nl=False)
            return
        log = Path(cfg.output) / "demo.log"         # the whole demo's log, beside its report
        log.parent.mkdir(parents=True, exist_ok=True)
        add_log_file(log)
        try:
            report = run(cfg, command=" ".join(["actgen-demo", *sys.argv[1:]]))
        finally:
            remove_log_file(log)
        click.echo(f"report: {report}")


if __name__ == "__main__":  # python -m actgen.demo.cli ...
    main()
