"""``actgen-data``: look into and check shard data sets received from, or handed to, another team."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from actgen.shards import __version__
from actgen.shards.errors import cli_errors, printable
from actgen.shards.runtime import setup_logging

EPILOG = """\b
Examples:
  actgen-data import data/my-photos data/my-photos-arrow   # open once: Arrow shards, same fingerprint
  actgen-data info runs/demo/active/rounds/1/shards
  actgen-data info runs/demo/active/rounds/1/shards --json
  actgen-data verify runs/demo/active/rounds/1/shards --decode
  actgen-data verify https://host/sets/round-1 --class-names airplane,automobile,...
  actgen-data merge runs/demo/merged runs/demo/active/rounds/*/shards
  actgen-data filter runs/demo/merged runs/demo/kept --checkpoint runs/demo/active/rounds/2/checkpoint
  actgen-data browse runs/demo/merged runs/demo/gallery      # then open runs/demo/gallery/index.html

\b
A data set is a location holding index.json and the shards it lists, as actgen-build writes it:
a folder, an http(s) URL, or an object store (s3://, gs://, hf://; info, verify, merge and filter
read them all and merge and filter write to them; publish uploads a folder; browse takes a folder).
A data set that fails a check (or is none) exits with status 2 and one line naming the file and
what is wrong; info prints its summary and exits 1 when it does not verify.
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.version_option(__version__, "--version", prog_name="actgen-data", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", "--debug", "verbose", is_flag=True, help="Debug logging and tracebacks.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Inspect, verify, merge, filter and browse ActGen synthetic data sets (WebDataset shards + index.json)."""
    setup_logging(verbose)
    ctx.obj = {"verbose": verbose}


@main.command()
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip the checksum / count check.")
@click.option("--decode", is_flag=True, help="Verify by decoding every image too (slower).")
@click.pass_context
def info(ctx: click.Context, dataset: str, as_json: bool, no_verify: bool, decode: bool) -> None:
    """What DATASET holds: images per class, mode, round and generator; image size; the build
    settings; whether it verifies."""
    with cli_errors("actgen-data info", ctx.obj["verbose"]):
        from .inspect import describe, format_summary
        from .remote import local_copies

        with local_copies([dataset]) as (folder,):
            summary = describe(folder, check=not no_verify, decode=decode)
        summary["location"] = dataset
        click.echo(json.dumps(summary, indent=1) if as_json else format_summary(summary))
        if "verify" in summary and not summary["verify"]["ok"]:
            ctx.exit(1)


@main.command("verify")
@click.argument("dataset")
@click.option("--class-names", default=None, metavar="A,B,...",
              help="The class names it must have, in label order (comma-separated).")
@click.option("--decode/--no-decode", default=True, show_default=True, help="Decode every image.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Bound on all downloads together (URLs; with --ray-address, each shard's).")
@click.option("--ray-address", default=None, metavar="HOST:PORT|auto",
              help="Check the shards on this Ray cluster (Ray Data, a shard per worker at a time); its nodes "
                   "must reach DATASET at the same path or URL.")
@click.pass_context
def verify_command(ctx: click.Context, dataset: str, class_names: Optional[str], decode: bool,
                   timeout: Optional[float], ray_address: Optional[str]) -> None:
    """Check DATASET: index, sizes, sha256s, sample counts, labels, keys, images, class names."""
    with cli_errors("actgen-data verify", ctx.obj["verbose"]):
        from actgen.shards.cluster import joined
        from actgen.shards.verify import verify

        names = [n.strip() for n in class_names.split(",")] if class_names else None
        with joined(ray_address, "--ray-address", "leave --ray-address out to verify in this process") as on_ray:
            report = verify(dataset, class_names=names, decode=decode, timeout_s=timeout, ray=on_ray)
        click.echo(f"{printable(dataset)}: ok, {report.num_samples} samples in {report.num_shards} shards")
        if report.extra_members:
            click.echo("other members (skipped by every reader): "
                       + ", ".join(f".{ext} in {n} samples" for ext, n in report.extra_members.items()))


@main.command("publish")
@click.argument("dataset", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("url")
@click.option("--overwrite", is_flag=True, help="Replace a data set already at URL (what the old set had and the "
                                               "new one does not is removed once the new index is in place).")
@click.option("--create-repo", is_flag=True, help="hf:// only: create the data-set repository if it does not exist.")
@click.pass_context
def publish_command(ctx: click.Context, dataset: Path, url: str, overwrite: bool, create_repo: bool) -> None:
    """Verify DATASET and upload it to URL (s3://bucket/set, gs://..., hf://datasets/owner/name):
    exactly the shards its index lists and its card, _info.json, contact sheet and memory bank,
    each checked first (a link or a missing file uploads nothing). On a bucket the files go first
    and index.json last, so a reader there never sees it half-written; on the Hub the set is one
    commit. Credentials and endpoints come from the store's own settings (for S3: AWS_* variables,
    ~/.aws; for the Hub: HF_TOKEN or `hf auth login`)."""
    with cli_errors("actgen-data publish", ctx.obj["verbose"]):
        from actgen.shards.publish import publish

        n = publish(dataset, url, overwrite=overwrite, create_repo=create_repo)
        click.echo(f"{printable(url)}: published {n} files")


@main.command("merge")
@click.argument("output")
@click.argument("sources", nargs=-1, required=True)
@click.option("--samples-per-shard", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a data set already in OUTPUT.")
@click.option("--format", "image_format", type=click.Choice(["png", "jpg", "webp"]), default=None,
              help="Image format of OUTPUT; needed when the sources differ (images in another format are "
                   "re-encoded). Default: the sources' own, their stored bytes copied unchanged.")
@click.pass_context
def merge_command(ctx: click.Context, output: str, sources: tuple[str, ...], samples_per_shard: int,
                  overwrite: bool, image_format: Optional[str]) -> None:
    """Merge the SOURCES data sets (e.g. every round of a run) into one new data set in OUTPUT:
    one index and card listing the sources, keys and provenance kept."""
    with cli_errors("actgen-data merge", ctx.obj["verbose"]):
        from .merge import merge
        from .outputs import check_locations
        from .remote import local_copies, local_output

        check_locations(output, sources)      # before anything is fetched: a source is never replaced
        with local_copies(sources) as folders, local_output(output, overwrite) as out:
            index = merge(folders, out, samples_per_shard=samples_per_shard, overwrite=overwrite,
                          image_format=image_format)
        click.echo(f"{printable(output)}: {index.num_samples} images in {len(index.shards)} shards from "
                   f"{len(sources)} data sets")


def _folder_only(command: str):
    """A click callback refusing a URL where ``command`` takes a local folder (saying so, instead
    of a file-not-found for a mangled path)."""
    def check(ctx, param, value):
        from actgen.shards.transfer import is_url

        if value is not None and is_url(str(value)):
            raise click.BadParameter(f"{value} is a URL; {command} takes a local folder (fetch it first: "
                                     f"actgen-data merge <folder> {value})", param_hint=param.name.upper())
        return Path(value) if value is not None else None
    return check


@main.command("import")
@click.argument("source")
@click.argument("output", callback=_folder_only("import"))
@click.option("--split", default="train", show_default=True, help="Split of SOURCE to read.")
@click.option("--image-column", default="image", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--class-names", default=None, metavar="A,B,...",
              help="Class names in label order, where the label column is not a ClassLabel.")
@click.option("--max-shard-size", default="500MB", show_default=True, help="Largest Arrow shard written.")
@click.option("--num-proc", type=click.IntRange(min=1), default=None,
              help="Local processes writing shards (without --ray-address).")
@click.option("--decode", is_flag=True, help="Also decode every image: a corrupt one fails the import, naming its row.")
@click.option("--ray-address", default=None, metavar="HOST:PORT|auto",
              help="Write the shards on this Ray cluster (Ray Data, one shard per worker at a time, at least one "
                   "shard per CPU); its nodes must see SOURCE, the datasets cache and OUTPUT at the same paths.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier import in OUTPUT.")
@click.pass_context
def import_command(ctx: click.Context, source: str, output: Path, split: str, image_column: str, label_column: str,
                   class_names: Optional[str], max_shard_size: str, num_proc: Optional[int], decode: bool,
                   ray_address: Optional[str], overwrite: bool) -> None:
    """Convert SOURCE (an image folder, parquet/arrow files, a hub name: anything the trainer
    reads) once into Arrow shards in OUTPUT, with the same content fingerprint. An image folder is
    listed again by every process that opens it (minutes at a million images); OUTPUT opens in
    about a second: name it as data.source.path (and in the builder) from then on."""
    with cli_errors("actgen-data import", ctx.obj["verbose"]):
        from actgen.shards.sources import DataSource

        from .importing import import_source

        names = [n.strip() for n in class_names.split(",")] if class_names else None
        done = import_source(DataSource(path=source, split=split, image_column=image_column,
                                        label_column=label_column, class_names=names),
                             output, overwrite=overwrite, max_shard_size=max_shard_size, num_proc=num_proc, decode=decode,
                             ray_address=ray_address)
        click.echo(f"{printable(str(output))}: {done['rows']} images, {done['classes']} classes, {done['shards']} "
                   f"Arrow shards, fingerprint {done['fingerprint'][:12]} (the source's)")


@main.command("filter")
@click.argument("dataset")
@click.argument("output")
@click.option("--checkpoint", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The classifier bundle that scores the images (e.g. a round's checkpoint/).")
@click.option("--min-prob", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Keep an image when the probability of its label is at least this.")
@click.option("--max-rank", type=click.IntRange(min=1), default=1, show_default=True,
              help="... and its label is among this many most probable classes (1: the top class).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a data set already in OUTPUT.")
@click.pass_context
def filter_command(ctx: click.Context, dataset: str, output: str, checkpoint: Path, min_prob: float,
                   max_rank: int, device: str, overwrite: bool) -> None:
    """A new data set in OUTPUT with the images of DATASET that a classifier assigns to their label
    (the filter's settings and the classifier's sha256 in its index and card)."""
    with cli_errors("actgen-data filter", ctx.obj["verbose"]):
        from .filter import ClassifierScorer, filter_dataset
        from .outputs import check_locations
        from .remote import local_copies, local_output

        check_locations(output, [dataset])
        with local_copies([dataset]) as (folder,), local_output(output, overwrite) as out:
            index = filter_dataset(folder, out, ClassifierScorer(checkpoint, device=device), min_prob=min_prob,
                                   max_rank=max_rank, overwrite=overwrite)
        f = index.created["filter"]
        click.echo(f"{printable(output)}: kept {f['kept']} of {f['of']} images")


@main.command("browse")
@click.argument("dataset", callback=_folder_only("browse"))
@click.argument("output", callback=_folder_only("browse"))
@click.option("--thumb", type=click.IntRange(16, 512), default=96, show_default=True, help="Thumbnail side (px).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="At most this many images, the data set's first (default: 2,000; see --all).")
@click.option("--all", "all_images", is_flag=True, help="Every image of the data set, however many.")
@click.option("--page-size", type=click.IntRange(min=1), default=200, show_default=True,
              help="Thumbnails shown (and loaded) per page.")
@click.option("--overwrite", is_flag=True, help="Replace a gallery already in OUTPUT.")
@click.pass_context
def browse_command(ctx: click.Context, dataset: Path, output: Path, thumb: int, limit, all_images: bool,
                   page_size: int, overwrite: bool) -> None:
    """A static HTML gallery of DATASET in OUTPUT (index.html + thumbs/; no server, no network):
    filters by class, mode and round, each image's provenance on a click."""
    with cli_errors("actgen-data browse", ctx.obj["verbose"]):
        from .browse import write_gallery

        from .browse import THUMB_BUDGET

        if all_images and limit is not None:
            raise click.UsageError("--all and --limit exclude each other")
        n = write_gallery(dataset, output, thumb=thumb, limit=None if all_images else (limit or THUMB_BUDGET),
                          overwrite=overwrite, page_size=page_size)
        click.echo(f"{output / 'index.html'}: {n} images, {page_size} a page"
                   + ("" if all_images or limit else f" (at most {THUMB_BUDGET}; --all for every image)"))


if __name__ == "__main__":  # python -m actgen.sharing.cli ...
    main()
