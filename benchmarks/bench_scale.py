"""Scale benchmark: what opening a data set, loading it and a builder worker's memory bank cost
as the data set and the run grow.

Five parts, on CPU; the first two on synthetic image folders of N tiny PNGs (8x8, 10 classes;
writing them is not timed):

* ``open``: for each N, ``load_source`` on the image folder (once: it is the slow one, listed and
  stat-ed file by file), then ``actgen-data import`` of it (timed), then ``load_source`` on the
  imported Arrow folder (median of ``--repeats``). The two fingerprints must be equal (manifests
  and sample ids stay valid across the import); the script fails otherwise.
* ``loader``: at the largest N, one pass over the imported data by the trainer's training loader
  (``make_train_loader``: the mixing batch sampler, per-sample seeds, the trainer's transform)
  against a plain ``DataLoader`` over the same rows with the same transform and batch size
  (shuffled, ``num_workers`` as given); images per second, median of ``--repeats`` interleaved
  passes, and their ratio.

* ``pool``: a pool set of ``--pool-images`` synthetic images: the sample index a starting
  process builds by scanning its tars against reading the one kept beside them.
* ``rounds``: a live ``actgen-train`` run of ``--rounds`` rounds on the largest imported set, its
  builder inline in ``mode: copy`` (nothing rendered): each round's overhead (the inline build and
  the join at the next epoch), medians over 5 rounds around rounds 1, 10, 20 and 40.
* ``bank``: a builder worker's start bank at rounds 10, 20 and 40 of a run whose rounds add 867
  latents each (the ImageNet recipe's budget) over 1,000 classes with a fixed total cap: the
  worker that stays up across rounds (reads only the new round's bank) against a fresh load of
  every earlier bank; time (median of ``--repeats``) and the process's RSS.

Every process opens its data set once (the builder's driver and actors keep it across rounds;
``tests/test_build_*`` check that), so the open time here is paid once per process and resume.

    python benchmarks/bench_scale.py                          # N = 10k, 20k, 40k; 40 bank rounds
    python benchmarks/bench_scale.py --skip open loader       # the bank part alone
    python benchmarks/bench_scale.py --sizes 10000 80000 --repeats 5

Prints a table and writes ``benchmarks/results/scale.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CLASSES = [f"class{i}" for i in range(10)]


def write_folder(root: Path, n: int, seed: int = 0) -> None:
    """``n`` 8x8 RGB PNGs in class folders (an imagefolder)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    for i in range(n):
        Image.fromarray(pixels[i]).save(root / CLASSES[i % len(CLASSES)] / f"{i:07d}.png")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def open_part(sizes: list[int], repeats: int, work: Path) -> list[dict]:
    from actgen.sharing.importing import import_source
    from actgen.shards.sources import DataSource, load_source

    rows = []
    for n in sizes:
        folder, imported = work / f"folder-{n}", work / f"arrow-{n}"
        write_folder(folder, n)
        images, folder_s = _timed(lambda: load_source(DataSource(path=str(folder))))
        _, import_s = _timed(lambda: import_source(DataSource(path=str(folder)), imported))
        times, fingerprint = [], None
        for _ in range(repeats):
            opened, seconds = _timed(lambda: load_source(DataSource(path=str(imported))))
            times.append(seconds)
            fingerprint = opened.fingerprint
        if fingerprint != images.fingerprint or len(opened) != n:
            raise SystemExit(f"N={n}: the import opened with fingerprint {fingerprint} and {len(opened)} rows, "
                             f"the folder with {images.fingerprint} and {n}")
        row = {"images": n, "folder_open_s": folder_s, "import_s": import_s,
               "imported_open_s": statistics.median(times), "imported_open_all_s": times,
               "speedup": folder_s / statistics.median(times)}
        print(f"  N={n}: folder {folder_s:.1f} s, import {import_s:.1f} s, imported {row['imported_open_s']:.2f} s",
              flush=True)
        rows.append(row)
    return rows


def loader_part(imported: Path, repeats: int, batch_size: int, num_workers: int) -> dict:
    """Images/s of one pass over the imported data, four ways over the same rows and augmentation
    (the trainer's pad-crop transform): a plain DataLoader (float32 from the workers: the
    baseline), the trainer's loader normalising in the workers and on the device
    (``loader.normalize``), and timm's own ``PrefetchLoader`` over a plain DataLoader of uint8
    images (what ``timm.data.create_loader`` builds with its prefetcher). A fifth pass, the
    trainer's loader without its per-sample re-seeding, says what that costs."""
    from timm.data.loader import PrefetchLoader
    from torch.utils.data import DataLoader

    from actgen.shards.sources import DataSource, load_source
    from actgen.trainer.config import load_config
    from actgen.trainer.data import RealImages, make_train_loader
    from actgen.trainer.transforms import build_train_transform

    images = load_source(DataSource(path=str(imported)))
    sets = [f"data.source.path={imported}", "input.image_size=32", "input.crop=pad", "input.pad=2",
            f"loader.batch_size={batch_size}", f"loader.num_workers={num_workers}", "train.device=cpu"]
    cfg = load_config(None, sets)
    on_device = load_config(None, [*sets, "loader.normalize=device"])
    indices = np.arange(len(images))
    cpu = torch.device("cpu")

    def plain_loader(uint8: bool):
        data = RealImages(images, indices, build_train_transform(cfg.input, uint8=uint8))
        return DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                          generator=torch.Generator().manual_seed(0))

    def trainer_pass(config) -> float:
        loader, sampler = make_train_loader(config, images, [indices], device=cpu)
        sampler.set_epoch(0)
        return _images_per_s(loader)

    def unseeded_pass() -> float:
        # Attribution only: the trainer's loader without the per-sample re-seeding of a worker's
        # RNGs (what makes augmentations independent of the worker count); not a setting.
        from actgen.trainer import data

        seed = data._seed_worker_rngs
        data._seed_worker_rngs = lambda _: None
        try:
            return trainer_pass(cfg)
        finally:
            data._seed_worker_rngs = seed

    ways = {"plain": lambda: _images_per_s(plain_loader(False)),
            "trainer": lambda: trainer_pass(cfg),
            "trainer_unseeded": unseeded_pass,
            "trainer_device": lambda: trainer_pass(on_device),
            "timm_prefetch": lambda: _images_per_s(PrefetchLoader(plain_loader(True), mean=tuple(cfg.input.mean),
                                                                  std=tuple(cfg.input.std), device=cpu))}
    passes: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(repeats):         # interleaved: the machine's drift hits every way alike
        for name, way in ways.items():
            passes[name].append(way())
    med = {k: statistics.median(v) for k, v in passes.items()}
    return {"images": len(images), "batch_size": batch_size, "num_workers": num_workers,
            **{f"{k}_images_per_s": v for k, v in med.items()}, **{f"{k}_all": v for k, v in passes.items()},
            "ratio": med["trainer"] / med["plain"], "ratio_unseeded": med["trainer_unseeded"] / med["plain"],
            "ratio_device": med["trainer_device"] / med["plain"],
            "ratio_timm": med["timm_prefetch"] / med["plain"]}


def _rss_mib() -> float:
    """This process's resident memory now (Linux), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bank_part(work: Path, rounds: int, per_round: int, classes: int, capacity: int, total_capacity: int,
              latent: tuple[int, ...], probes: list[int], repeats: int) -> dict:
    """A builder worker's start bank at round r: ``rounds`` bank files of ``per_round`` latents
    (classes drawn evenly), loaded the way a worker that stays up across rounds loads them
    (``incremental_start``: only the new round's file) against a fresh load of every earlier file
    (``load_start`` + ``kept_entries``: what a new worker does). Time per round and RSS, at the
    ``probes`` rounds (median of ``repeats`` runs of the whole sequence for the time)."""
    import gc

    from actgen.builder import bank_store
    from actgen.builder.bank_store import BankEntries, incremental_start, kept_entries, load_start, save_entries

    rng = np.random.default_rng(0)
    files = []
    for r in range(rounds):
        labels = rng.integers(0, classes, size=per_round).astype(np.int64)
        latents = rng.standard_normal((per_round, *latent)).astype(np.float16)
        path = work / f"bank-{r:03d}.safetensors"
        save_entries(path, BankEntries(labels, latents), r)
        files.append(str(path))
    incremental: dict[int, list[float]] = {r: [] for r in probes}
    fresh: dict[int, list[float]] = {r: [] for r in probes}
    rss: dict[int, float] = {}
    held: dict[int, int] = {}
    for _ in range(repeats):
        bank_store._START.clear()
        gc.collect()
        for r in range(1, rounds + 1):      # round r starts from rounds 0..r-1
            entries, seconds = _timed(lambda: incremental_start(files[:r], capacity, total_capacity))
            if r in incremental:
                incremental[r].append(seconds)
                rss[r], held[r] = _rss_mib(), len(entries)
        for r in probes:
            _, seconds = _timed(lambda: kept_entries(load_start(files[:r]), capacity, total_capacity))
            fresh[r].append(seconds)
    entry_kib = int(np.prod(latent)) * 2 / 1024
    rows = [{"round": r, "entries_held": held[r], "incremental_s": statistics.median(incremental[r]),
             "fresh_load_s": statistics.median(fresh[r]), "rss_mib": rss[r]} for r in probes]
    for row in rows:
        print(f"  round {row['round']}: {row['entries_held']:,} entries held, incremental "
              f"{row['incremental_s'] * 1e3:.0f} ms, fresh {row['fresh_load_s'] * 1e3:.0f} ms, "
              f"RSS {row['rss_mib']:.0f} MiB", flush=True)
    return {"rounds": rounds, "per_round": per_round, "classes": classes, "capacity": capacity,
            "total_capacity": total_capacity, "latent": list(latent), "entry_kib": entry_kib, "probes": rows}


def pool_index_part(work: Path, n: int, repeats: int) -> dict:
    """A pool set of ``n`` synthetic 8x8 images (20 shards): the sample index a starting process
    builds by scanning the tars, against reading the record the first process kept beside them."""
    from PIL import Image

    from actgen.shards.samples import SyntheticSample, make_key
    from actgen.shards.writer import ShardSetWriter
    from actgen.trainer import pool_images

    directory = work / "pool-set"
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    with ShardSetWriter(directory, CLASSES, total=n, num_shards=20, created={"round": 0}) as writer:
        for i in range(n):
            label = i % len(CLASSES)
            provenance = {"class_name": CLASSES[label], "source_id": f"{'f' * 12}-{i:08d}",
                          "generator": {"id": "bench", "weights_sha256": "0" * 64}, "prompt": CLASSES[label],
                          "seed": i, "guidance": {}, "checkpoint_sha256": "1" * 64, "round": 0,
                          "tool_version": "bench"}
            writer.write(SyntheticSample(key=make_key(0, f"{'f' * 12}-{i:08d}", i, i),
                                         image=Image.fromarray(pixels[i], "RGB"), label=label,
                                         provenance=provenance))
    scans, reads = [], []
    for _ in range(repeats):
        (directory / pool_images.SAMPLE_INDEX_FILE).unlink(missing_ok=True)
        pool_images._INDEXED.clear()
        access, seconds = _timed(lambda: pool_images.shard_index(directory, persist=True))
        assert not access.from_record
        scans.append(seconds)
        pool_images._INDEXED.clear()     # a new process
        access, seconds = _timed(lambda: pool_images.shard_index(directory, persist=True))
        assert access.from_record and len(access) == n
        reads.append(seconds)
    row = {"images": n, "scan_s": statistics.median(scans), "record_s": statistics.median(reads),
           "record_bytes": (directory / pool_images.SAMPLE_INDEX_FILE).stat().st_size}
    print(f"  {n:,} images: scan {row['scan_s']:.2f} s, from the kept record {row['record_s']:.2f} s", flush=True)
    return row


COPY_BUILD = """\
generator: {path: /nonexistent/generator}   # copy mode loads none
mode: copy
targets: hard
allocation: {policy: paper}
schedule: {enabled: false}
budget: %d
batch_size: 16
output: {resize: classifier, samples_per_shard: 8, min_shards: 2, contact_sheet: 0}
ray: {executor: local}
"""


def rounds_part(imported: Path, work: Path, rounds: int, budget: int, window: int) -> dict:
    """A live run on the imported data set: ``actgen-train`` with its builder inline (one
    ``actgen-build --serve`` for the run) in ``mode: copy``, so a round renders nothing (it copies
    ``budget`` guide images) and what a round costs beyond training is its overhead: the inline
    build (the request, the builder's driver: inputs, plan, bank, writing the set) and the join at
    the next epoch (verify, link into the pool, index). Training is kept small (2% of the images,
    the rest a hold-out each round searches) so that 40 rounds take minutes; the data set the
    builder's driver serves is the whole of it. Medians over ``window`` rounds around each probe."""
    from actgen.trainer import pool_images
    from actgen.trainer import rounds as trainer_rounds
    from actgen.trainer import run as trainer_run
    from actgen.trainer.config import load_config

    from actgen.shards.sources import DataSource, load_source

    build_yaml = work / "build-copy.yaml"
    build_yaml.write_text(COPY_BUILD % budget)
    holdout = min(0.98, 1 - 128 / len(load_source(DataSource(path=str(imported)))))   # at least 2 batches trained
    cfg = load_config(None, [
        f"data.source.path={imported}", f"data.holdout_fraction={holdout}", "rounds.search=holdout",
        "rounds.selection.rule=loss", f"rounds.selection.k={budget}", "rounds.every=1", f"rounds.horizon={rounds}",
        f"rounds.merge_epoch={rounds + 1}", f"train.epochs={rounds + 1}", "input.image_size=16", "input.crop=pad",
        "input.pad=2", "input.hflip=0.0", "input.mean=[0.5,0.5,0.5]", "input.std=[0.5,0.5,0.5]",
        "loader.batch_size=64", "loader.eval_batch_size=1024", "model.name=test_resnet", "train.device=cpu",
        "train.progress=false", "train.precise_bn_steps=0", "train.log_interval=1000", "synthetic.source=inline",
        f"synthetic.build_config={build_yaml}", "synthetic.on_missing=error", f"run_dir={work / 'rounds-run'}"])
    builds: dict[int, tuple[float, float]] = {}
    joins: dict[int, float] = {}
    indexing: list[float] = []
    build_round, obtain, shard_index = trainer_rounds.build_round, trainer_run.obtain, pool_images.shard_index

    def timed_build(synthetic, round_directory, output, dataset=None):
        reply, seconds = _timed(lambda: build_round(synthetic, round_directory, output, dataset))
        builds[int(Path(round_directory).name)] = (seconds, float(reply.get("seconds", float("nan"))))
        return reply

    def timed_obtain(location, run_dir, round, *args, **kwargs):
        entry, seconds = _timed(lambda: obtain(location, run_dir, round, *args, **kwargs))
        joins[round] = seconds
        return entry

    def timed_index(directory, persist=False):
        access, seconds = _timed(lambda: shard_index(directory, persist))
        indexing.append(seconds)
        return access

    trainer_rounds.build_round, trainer_run.obtain, pool_images.shard_index = timed_build, timed_obtain, timed_index
    try:
        _, total = _timed(lambda: trainer_run.run(cfg))
    finally:
        trainer_rounds.build_round, trainer_run.obtain, pool_images.shard_index = build_round, obtain, shard_index
    per_round = {r: {"build_s": builds[r][0], "builder_s": builds[r][1], "join_s": joins.get(r, float("nan"))}
                 for r in sorted(builds)}
    for row in per_round.values():
        row["overhead_s"] = row["build_s"] + row["join_s"]
    probes = []
    for centre in sorted({1, min(10, rounds - 1), rounds // 2, rounds - 1}):
        near = [per_round[r] for r in range(max(1, centre - window // 2), min(rounds, centre + window // 2 + 1))]
        probe = {"round": centre, "rounds": len(near)}
        for k in ("build_s", "builder_s", "join_s", "overhead_s"):
            probe[k] = statistics.median(row[k] for row in near)
        probes.append(probe)
        print(f"  round {centre}: overhead {probe['overhead_s']:.2f} s (inline build {probe['build_s']:.2f} s, of it "
              f"the builder {probe['builder_s']:.2f} s; join {probe['join_s']:.2f} s)", flush=True)
    return {"rounds": rounds, "budget": budget, "window": window, "first_round": per_round[0],
            "per_round": per_round, "probes": probes, "run_s": total}


def _images_per_s(loader) -> float:
    t0, seen = time.perf_counter(), 0
    for inputs, _ in loader:
        seen += inputs.shape[0]
    return seen / (time.perf_counter() - t0)


def _table(header: list[str], rows: list[list[str]]) -> None:
    """Print a markdown table (what docs/benchmarks.md shows)."""
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 40_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--bank-rounds", type=int, default=40)
    parser.add_argument("--bank-per-round", type=int, default=867, help="latents a round adds (the ImageNet recipe's budget)")
    parser.add_argument("--bank-classes", type=int, default=1000)
    parser.add_argument("--bank-capacity", type=int, default=1024, help="per class (the recipe's bank_capacity)")
    parser.add_argument("--bank-total", type=int, default=4096, help="bank_total_capacity: the fixed cap (binds by round 5)")
    parser.add_argument("--pool-images", type=int, default=40_000, help="images in the pool set of the pool-index part")
    parser.add_argument("--rounds", type=int, default=40, help="rounds of the live run (its data: the largest size)")
    parser.add_argument("--round-budget", type=int, default=16)
    parser.add_argument("--skip", nargs="*", default=[], choices=["open", "loader", "bank", "pool", "rounds"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    opens, loader, bank, pool, live = [], None, None, None, None
    with tempfile.TemporaryDirectory(prefix="actgen-scale-") as tmp:
        work = Path(tmp)
        if "open" not in args.skip or "loader" not in args.skip or "rounds" not in args.skip:
            print("open (image folder, import, imported folder):", flush=True)
            opens = open_part(sorted(args.sizes), args.repeats, work)
        if "loader" not in args.skip:
            largest = max(args.sizes)
            print(f"loader (N={largest}, batch {args.batch_size}, {args.num_workers} workers):", flush=True)
            loader = loader_part(work / f"arrow-{largest}", args.repeats, args.batch_size, args.num_workers)
        if "bank" not in args.skip:
            probes = sorted({min(10, args.bank_rounds), args.bank_rounds // 2, args.bank_rounds} - {0})
            print(f"bank ({args.bank_rounds} rounds of {args.bank_per_round} latents 4x32x32, {args.bank_classes} "
                  f"classes, capacity {args.bank_capacity} a class, {args.bank_total} in all):", flush=True)
            bank = bank_part(work, args.bank_rounds, args.bank_per_round, args.bank_classes, args.bank_capacity,
                             args.bank_total, (4, 32, 32), probes, args.repeats)

        if "pool" not in args.skip:
            print(f"pool index ({args.pool_images:,} synthetic images in 20 shards):", flush=True)
            pool = pool_index_part(work, args.pool_images, args.repeats)
        if "rounds" not in args.skip:
            largest = max(args.sizes)
            print(f"live rounds (N={largest}, {args.rounds} rounds of {args.round_budget} copied images):", flush=True)
            live = rounds_part(work / f"arrow-{largest}", work, args.rounds, args.round_budget, window=5)

    if opens:
        _table(["images", "folder open", "import", "imported open", "speed-up"],
               [[f"{r['images']:,}", f"{r['folder_open_s']:.1f} s", f"{r['import_s']:.1f} s",
                 f"{r['imported_open_s']:.2f} s", f"{r['speedup']:.0f}x"] for r in opens])
    if loader:
        print(f"\nloader on the imported {loader['images']:,} images (batch {loader['batch_size']}, "
              f"{loader['num_workers']} workers; median of the passes):")
        _table(["loader", "images/s", "vs plain DataLoader"],
               [[name, f"{loader[f'{key}_images_per_s']:,.0f}", f"{ratio:.2f}x"] for name, key, ratio in (
                   ("plain DataLoader (float32 from the workers)", "plain", 1.0),
                   ("actgen-train, loader.normalize=workers", "trainer", loader["ratio"]),
                   ("  the same without re-seeding per sample (attribution only)", "trainer_unseeded",
                    loader["ratio_unseeded"]),
                   ("actgen-train, loader.normalize=device", "trainer_device", loader["ratio_device"]),
                   ("timm PrefetchLoader (uint8 from the workers)", "timm_prefetch", loader["ratio_timm"]))])
    if bank:
        _table(["round", "entries held", "worker load (incremental)", "fresh load of every bank", "RSS"],
               [[str(r["round"]), f"{r['entries_held']:,}", f"{r['incremental_s'] * 1e3:.0f} ms",
                 f"{r['fresh_load_s'] * 1e3:.0f} ms", f"{r['rss_mib']:.0f} MiB"] for r in bank["probes"]])
    if pool:
        print(f"\npool set of {pool['images']:,} images: scanning its tars {pool['scan_s']:.2f} s, its kept index "
              f"{pool['record_s']:.2f} s ({pool['record_bytes'] / 2**20:.1f} MiB)")
    if live:
        _table(["round", "per-round overhead", "inline build", "of it, the builder", "join (verify, link, index)"],
               [[str(r["round"]), *(f"{r[k]:.2f} s" for k in ("overhead_s", "build_s", "builder_s", "join_s"))]
                for r in live["probes"]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"open": opens, "loader": loader, "bank": bank, "pool_index": pool, "rounds": live,
                                    "repeats": args.repeats,
                                    "machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                                                "platform": platform.platform(),
                                                "cpus": os.cpu_count()}}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
