"""Scale benchmark: what opening a data set and loading it cost as the data set grows.

Two parts, on CPU, on synthetic image folders of N tiny PNGs (8x8, 10 classes; writing them is
not timed):

* ``open``: for each N, ``load_source`` on the image folder (once: it is the slow one, listed and
  stat-ed file by file), then ``actgen-data import`` of it (timed), then ``load_source`` on the
  imported Arrow folder (median of ``--repeats``). The two fingerprints must be equal (manifests
  and sample ids stay valid across the import); the script fails otherwise.
* ``loader``: at the largest N, one pass over the imported data by the trainer's training loader
  (``make_train_loader``: the mixing batch sampler, per-sample seeds, the trainer's transform)
  against a plain ``DataLoader`` over the same rows with the same transform and batch size
  (shuffled, ``num_workers`` as given); images per second, median of ``--repeats`` interleaved
  passes, and their ratio.

Every process opens its data set once (the builder's driver and actors keep it across rounds;
``tests/test_build_*`` check that), so the open time here is paid once per process and resume.

    python benchmarks/bench_scale.py                          # N = 10k, 20k, 40k
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
    from torch.utils.data import DataLoader

    from actgen.shards.sources import DataSource, load_source
    from actgen.trainer.config import load_config
    from actgen.trainer.data import RealImages, build_train_transform, make_train_loader

    images = load_source(DataSource(path=str(imported)))
    cfg = load_config(None, [f"data.source.path={imported}", "input.image_size=32", "input.crop=pad", "input.pad=2",
                             f"loader.batch_size={batch_size}", f"loader.num_workers={num_workers}",
                             "train.device=cpu"])
    indices = np.arange(len(images))

    def trainer_pass() -> float:
        loader, sampler = make_train_loader(cfg, images, [indices])
        sampler.set_epoch(0)
        return _images_per_s(loader)

    def plain_pass() -> float:
        data = RealImages(images, indices, build_train_transform(cfg.input))
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                            generator=torch.Generator().manual_seed(0))
        return _images_per_s(loader)

    trainer, plain = [], []
    for _ in range(repeats):         # interleaved: the machine's drift hits both alike
        plain.append(plain_pass())
        trainer.append(trainer_pass())
    return {"images": len(images), "batch_size": batch_size, "num_workers": num_workers,
            "trainer_images_per_s": statistics.median(trainer), "plain_images_per_s": statistics.median(plain),
            "trainer_all": trainer, "plain_all": plain,
            "ratio": statistics.median(trainer) / statistics.median(plain)}


def _images_per_s(loader) -> float:
    t0, seen = time.perf_counter(), 0
    for inputs, _ in loader:
        seen += inputs.shape[0]
    return seen / (time.perf_counter() - t0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 40_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="actgen-scale-") as tmp:
        work = Path(tmp)
        print("open (image folder, import, imported folder):", flush=True)
        opens = open_part(sorted(args.sizes), args.repeats, work)
        largest = max(args.sizes)
        print(f"loader (N={largest}, batch {args.batch_size}, {args.num_workers} workers):", flush=True)
        loader = loader_part(work / f"arrow-{largest}", args.repeats, args.batch_size, args.num_workers)

    print("\n| images | folder open | import | imported open | speed-up |")
    print("|---|---|---|---|---|")
    for r in opens:
        print(f"| {r['images']:,} | {r['folder_open_s']:.1f} s | {r['import_s']:.1f} s | {r['imported_open_s']:.2f} s "
              f"| {r['speedup']:.0f}x |")
    print(f"\nloader on the imported {loader['images']:,} images: trainer {loader['trainer_images_per_s']:,.0f} img/s, "
          f"plain DataLoader {loader['plain_images_per_s']:,.0f} img/s, ratio {loader['ratio']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"open": opens, "loader": loader, "repeats": args.repeats,
                                    "machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                                                "platform": platform.platform(),
                                                "cpus": os.cpu_count()}}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
