"""``actgen-compare``: does active generation pay on my data? Run a frozen plan's conditions,
paired by split and seed, and report what they show."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import click

from actgen.shards import __version__
from actgen.shards.errors import cli_errors
from actgen.shards.runtime import setup_logging

_logger = logging.getLogger("actgen.study")

EPILOG = """\b
Examples:
  actgen-compare configs/compare-digits.yaml --out runs/compare --jobs 2
  actgen-compare configs/compare-digits.yaml --out runs/compare --splits 100,101   # part by part
  actgen-compare configs/compare-digits.yaml --out runs/compare --ray-address auto  # a Ray cluster
  actgen-compare configs/compare-digits.yaml --out runs/compare --report-only
  actgen-compare configs/compare-digits.yaml --print-config

\b
--out holds what to keep: the frozen plan (plan.json), one record per run (records/), and
report.md, report.json and report.png. --work (default <out>/work) holds what to throw away:
each split's data, fitted generators, run folders and logs. Stop it at any time: a rerun with
the same plan and --out continues (a finished run is never run again; a run with a checkpoint
resumes). A plan whose body changed is refused once records exist; amend it with a dated note.
"""


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.argument("plan", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Records, frozen plan and report.")
@click.option("--work", type=click.Path(file_okay=False), default=None,
              help="Splits, generators, run folders and logs (default: <out>/work).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a plan key (repeatable).")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="Runs at a time on this machine (each uses the plan's threads).")
@click.option("--ray-address", default=None, help="Run on a Ray cluster ('auto' or host:port): one run per slot.")
@click.option("--gpus-per-run", type=click.FloatRange(0), default=0.0, show_default=True,
              help="With --ray-address: GPUs each run asks for (1 = one run per GPU).")
@click.option("--splits", default=None, help="Only these split seeds of the plan, comma separated (a part).")
@click.option("--report-only", is_flag=True, help="Write the report from the records; run nothing.")
@click.option("--print-config", is_flag=True, help="Print the resolved plan as YAML and exit.")
@click.option("-v", "--verbose", "--debug", "verbose", is_flag=True, help="Debug logging and tracebacks.")
@click.version_option(__version__, "--version", prog_name="actgen-compare", message="%(prog)s %(version)s")
def main(plan: str, out: Optional[str], work: Optional[str], overrides: tuple[str, ...], jobs: int,
         ray_address: Optional[str], gpus_per_run: float, splits: Optional[str], report_only: bool,
         print_config: bool, verbose: bool) -> None:
    """Run the comparison PLAN describes (every condition x split x seed, paired) and write its
    report: each primary contrast with the split as a random effect, TOST equivalence against the
    plan's margin, Holm within groups, and the images random generation needs to match."""
    setup_logging(verbose)
    with cli_errors("actgen-compare", verbose):
        from actgen.shards.config import to_yaml

        from .plan import load_plan

        cfg = load_plan(plan, overrides)
        if print_config:
            click.echo(to_yaml(cfg), nl=False)
            return
        if out is None:
            raise click.UsageError("--out is required (where records and the report go)")
        only = None
        if splits is not None:
            try:
                only = [int(s) for s in splits.split(",") if s.strip()]
            except ValueError:
                raise click.BadParameter(f"{splits!r}: expected split seeds like 100,101", param_hint="--splits")
            unknown = sorted(set(only) - set(cfg.splits))
            if unknown:
                raise click.BadParameter(f"{unknown} are not splits of the plan ({cfg.splits})", param_hint="--splits")
        result = run(cfg, Path(out), Path(work) if work else None, jobs=jobs, ray_address=ray_address,
                     gpus_per_run=gpus_per_run, splits=only, report_only=report_only)
        click.echo(f"actgen-compare: {result['runs_recorded']} of {result['runs_planned']} runs recorded; "
                   f"report {Path(out) / 'report.md'}")


def run(cfg, out: Path, work: Optional[Path] = None, jobs: int = 1, ray_address: Optional[str] = None,
        gpus_per_run: float = 0.0, splits: Optional[list[int]] = None, report_only: bool = False) -> dict:
    """Freeze the plan, run what has no record yet (``splits``: only those), write the report."""
    from actgen.shards import __version__ as version

    from .plan import freeze
    from .report import load_records, write_report
    from .runs import check_train_configs, commit_of, prepare_split, record_path, run_all, specs

    out = Path(out)
    work = Path(work) if work is not None else out / "work"
    has_records = bool(load_records(out))
    sha = freeze(cfg, out, has_records)
    if not report_only:
        identity = {"plan_sha256": sha, "notes_in_force": len(cfg.notes), "commit": commit_of(),
                    "actgen_version": version}
        check_train_configs(cfg)
        chosen = [s for s in cfg.splits if splits is None or s in splits]
        inputs = {s: prepare_split(cfg, s, work) for s in chosen}
        todo = [s for s in specs(cfg, inputs, work, identity) if not record_path(out, s.split, s.name).is_file()]
        total, done = len(todo), 0
        _logger.info("%d runs to do (%d splits, jobs %d%s)", total, len(chosen), jobs,
                     f", Ray {ray_address}" if ray_address else "")

        def report_one(record: dict) -> None:
            nonlocal done
            done += 1
            _logger.info("[%d/%d] split %s %s: test %.2f%%, %d synthetic images, %.0f s", done, total,
                         record["split_seed"], record["run"], 100 * record["final_test_acc"],
                         record["images_generated"], record["wall_time_s"])

        run_all(todo, out, jobs=jobs, ray_address=ray_address, gpus_per_run=gpus_per_run, on_record=report_one)
    return write_report(cfg, sha, out)


if __name__ == "__main__":
    main()
