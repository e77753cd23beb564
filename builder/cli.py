"""``actgen-build``: parse, load the config, set up logging, call :func:`actgen.builder.pipeline.run`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from actgen.shards import __version__
from actgen.shards.rounds import SHARDS_DIR
from actgen.shards.runtime import run_log
from actgen.shards.errors import cli_errors
from actgen.shards.runtime import setup_logging


EPILOG = """\b
Examples:
  actgen-build --config configs/build-smoke.yaml --round-dir runs/digits/rounds/0
  actgen-build --config configs/build-sd21-base.yaml --round-dir runs/c10/rounds/3 \\
      --set generator.path=/models/sd21-base --set ray.address=auto
  actgen-build --config configs/build-smoke.yaml --checkpoint ckpt/ --manifest hard_samples.json \\
      --output out/ --set budget=32 --set mode=img2img --set ray.executor=local

\b
--round-dir R reads R/checkpoint/ and R/hard_samples.json (what actgen-train writes after each
round) and writes R/shards/, where the trainer looks for them. The output holds WebDataset shards,
index.json (written last), _info.json, a dataset card, build.json and contact_sheet.png.
A rerun after a crash renders only the missing shards; bad input exits with status 2, a failure
at run time (a worker, a full disk) with 1, each as one line (--debug: with the traceback).
The data set the manifest's ids point into is read from config key 'dataset', or from the
manifest when it is builtin:digits or lies inside a folder of config key 'data_roots'.

\b
Two-job mode: --watch RUN_DIR builds every round of a training run as its manifest appears
(actgen-train with synthetic.on_missing: wait), marks each in rounds/<r>/build_status.json, and
stops once all rounds of the run's schedule are built. Kill it and start it again at any time:
finished rounds are skipped and an interrupted one keeps its finished shards. One watcher per run
directory (a lock file beside it): a second one exits with status 2, naming the first.
  actgen-build --config configs/build-smoke.yaml --watch runs/digits
  actgen-build --config configs/build-sd21-base.yaml --watch /shared/runs/c10 --set ray.address=auto

\b
Server mode (what actgen-train's synthetic.source: inline starts once per run): --serve reads one
JSON line per round on stdin, {"round_dir": R, "output": O, "dataset": {...}}, builds it as
--round-dir R --output O would, and answers one line 'actgen-serve {"ok": ...}' on stdout.
"""


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.version_option(__version__, "--version", prog_name="actgen-build", message="%(prog)s %(version)s")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="YAML config (see configs/build-*.yaml); defaults when omitted.")
@click.option("--round-dir", type=click.Path(file_okay=False, path_type=Path),
              help="A trainer round directory: sets checkpoint, manifest and output.path inside it.")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Classifier bundle directory.")
@click.option("--manifest", type=click.Path(path_type=Path), help="Hard-sample manifest (hard_samples.json).")
@click.option("--output", type=click.Path(path_type=Path), help="Output directory of the shard data set.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set budget=64 --set guidance.margin=200 (repeatable).")
@click.option("--watch", "watch_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Two-job mode: build each round of this training run directory as it appears.")
@click.option("--poll", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              metavar="SECONDS", help="With --watch: seconds between looks for a new round.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="With --watch: attempts after a round's first failed build before giving up (the round "
                   "is marked 'retrying' meanwhile, so the trainer keeps waiting).")
@click.option("--retry-backoff", type=click.FloatRange(min=0), default=30.0, show_default=True, metavar="SECONDS",
              help="With --watch: wait before the first retry; each further one waits twice as long.")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="With --watch: fail after this long without a new round (default: wait for ever).")
@click.option("--serve", is_flag=True,
              help="Build the rounds named on stdin (one JSON line each), one reply line each on stdout, "
                   "with workers kept across rounds; for actgen-train's inline builds.")
@click.option("--request-listing-seconds", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="With --serve: refuse an image folder a request names (or its manifest does) whose listing "
                   "takes longer, so every request is answered quickly (default: 8; 0: no bound, what "
                   "actgen-train's own server uses for its data set).")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@click.option("--check", is_flag=True,
              help="Check the config and its generator (folder, components, steps) and the packages its "
                   "locations need, without a round; exit 0, or 2 with one line (actgen-train runs this "
                   "before an inline run starts).")
@click.option("-v", "--verbose", "--debug", "verbose", is_flag=True,
              help="Debug logging; tracebacks on stderr (else a failure's goes to a log file).")
def main(config_path: Optional[Path], round_dir: Optional[Path], checkpoint: Optional[Path],
         manifest: Optional[Path], output: Optional[Path], overrides: tuple[str, ...], watch_dir: Optional[Path],
         poll: float, retries: int, retry_backoff: float, idle_timeout: Optional[float], serve: bool,
         request_listing_seconds: Optional[float], print_config: bool, check: bool, verbose: bool) -> None:
    """Render ActGen's guided synthetic images near a classifier's hard samples, into shards.

    Reads a classifier checkpoint bundle and the hard-sample manifest of one training round,
    samples the round's image budget from the hard samples (a random permutation, cycled when
    there are fewer), renders each image with the guided sampler (txt2img, img2img or actgen,
    see the config's mode and guidance sections) on a Ray actor pool, and writes a WebDataset
    shard data set with provenance for every image.
    """
    setup_logging(verbose)
    with cli_errors("actgen-build", verbose,
                    interrupted="interrupted; rerun the same command to finish the missing shards"):
        from .config import config_to_yaml, load_config, round_overrides

        if print_config or check:
            # No inputs needed: paths not given are shown as what fills them in.
            given = round_overrides(round_dir, checkpoint, manifest, output)
            fill = "<each round's, from --watch/--serve>" if serve or watch_dir else "<not given>"
            literal = {k: given.get(k, fill) for k in ("checkpoint", "manifest", "output.path")}
            cfg = load_config(config_path, overrides, literal=literal)
            if print_config:
                click.echo(config_to_yaml(cfg), nl=False)
                return
            from .inputs import check_config

            check_config(cfg)
            click.echo("actgen-build: config and generator ok")
            return
        if serve:
            clash = [name for name, v in (("--round-dir", round_dir), ("--checkpoint", checkpoint),
                                          ("--manifest", manifest), ("--output", output), ("--watch", watch_dir))
                     if v is not None]
            if clash:
                raise click.UsageError(f"--serve takes each round's paths from stdin; drop {clash}")
            import sys

            from .serve import serve as serve_rounds

            bound = {} if request_listing_seconds is None else {"listing_seconds": request_listing_seconds or None}
            serve_rounds(config_path, overrides, sys.stdin, sys.stdout, **bound)
            return
        if watch_dir is not None:
            clash = [name for name, v in (("--round-dir", round_dir), ("--checkpoint", checkpoint),
                                          ("--manifest", manifest), ("--output", output)) if v is not None]
            if clash:
                raise click.UsageError(f"--watch sets each round's paths itself; drop {clash}")
            from .watch import WatchOptions, watch

            with run_log(watch_dir / "build.log"):       # the builder's log beside the trainer's
                built = watch(config_path, overrides,
                              WatchOptions(watch_dir, poll_s=poll, idle_timeout_s=idle_timeout, retries=retries,
                                           backoff_s=retry_backoff))
            click.echo(f"{watch_dir}: every round built ({len(built)} by this run)")
            return
        cfg = load_config(config_path, overrides, literal=round_overrides(round_dir, checkpoint, manifest, output))
        from .pipeline import build_and_mark

        # A trainer round folder keeps its build's log (never inside the data set, which travels).
        own = round_dir is not None and Path(cfg.output.path).absolute() == (round_dir / SHARDS_DIR).absolute()
        with run_log(round_dir / "build.log" if own and round_dir.is_dir() else None):
            result = build_and_mark(cfg, round_dir)   # a trainer round folder is marked, as the watcher does
        click.echo(f"{result.output}: {result.index.num_samples} images in {len(result.index.shards)} shards "
                   f"({len(result.rendered)} rendered, {len(result.kept)} kept)")


if __name__ == "__main__":  # python -m actgen.builder.cli ...
    main()
