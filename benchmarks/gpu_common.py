"""Helpers the GPU check's parts share (bench_gpu.py runs them): JSON results, device memory,
building the SD 2.1-base architecture, common arguments."""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PAPER_STEPS = 40
GIB = 2**30
STARTED = time.perf_counter()



# ------------------------------------------------------------------------------ JSON
def load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def update_json(path: Path, keys: list[str], value) -> None:
    """Set ``data[k0][k1]...[kn] = value`` in the JSON file, atomically."""
    data = load_json(path)
    d = data
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def log(msg: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------ helpers
def _torch():
    import torch

    return torch


def _sync(device: str) -> None:
    torch = _torch()
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    torch = _torch()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _mem(device: str) -> dict:
    """Peak and current GPU memory (GiB) since the last reset; empty on the CPU."""
    torch = _torch()
    if not device.startswith("cuda"):
        return {}
    free, total = torch.cuda.mem_get_info()
    return {"peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / GIB,
            "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved() / GIB,
            "allocated_gib": torch.cuda.memory_allocated() / GIB,
            "device_free_gib": free / GIB, "device_total_gib": total / GIB}


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        _torch().cuda.empty_cache()


def _is_oom(e: BaseException) -> bool:
    torch = _torch()
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _first_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0][:400]


def _bench_builder(arch_dir: str):
    """bench_builder, with its SD 2.1-base architecture folder pointed at ``arch_dir``."""
    sys.path.insert(0, str(HERE))
    import bench_builder

    bench_builder.SD21_ARCH = Path(arch_dir).resolve()
    return bench_builder


def build(args, dtype_name: str):
    """-> (generator, plain UNet copy) of the SD 2.1-base architecture, weights drawn on the device."""
    torch = _torch()
    bb = _bench_builder(args.arch_dir)
    dtype = getattr(torch, dtype_name)
    start = time.perf_counter()
    try:
        gen, plain = bb.build_components("sd21", args.device, dtype, args.size, init_device=args.device)
    except Exception as e:   # weights drawn on the device failed: draw them on the CPU (slower)
        if args.device == "cpu":
            raise
        log(f"building on {args.device} failed ({_first_line(e)}); building on the CPU")
        _free(args.device)
        gen, plain = bb.build_components("sd21", args.device, dtype, args.size, init_device="cpu")
    log(f"built SD 2.1-base architecture ({dtype_name}, {gen.image_size}x{gen.image_size}) on {args.device} "
        f"in {time.perf_counter() - start:.1f} s")
    return gen, plain


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, required=True, help="results file (merged into)")
    p.add_argument("--arch-dir", default=str(REPO / ".gpu" / "sd21-base-arch"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=PAPER_STEPS)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def _setup(args) -> None:
    torch = _torch()
    if args.threads:
        torch.set_num_threads(args.threads)
