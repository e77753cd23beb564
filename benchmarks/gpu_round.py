"""The GPU check's ``round`` part: a full ``actgen-build`` round (bundle + manifest written here,
the SD 2.1-base architecture with random weights saved as a generator folder) as a subprocess."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PAPER_STEPS = 40
GIB = 2**30
STARTED = time.perf_counter()



from gpu_common import GIB, REPO, STARTED, _bench_builder, _free, _setup, build, load_json, log, update_json  # noqa: E402


# ------------------------------------------------------------------------------ round
RENDER_LINE = re.compile(r"rendered (\d+) images in (\d+) shards in ([\d.]+) s \(([\d.]+) images/s\)")


def cmd_round(args) -> int:
    _setup(args)
    bb = _bench_builder(args.arch_dir)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    key = ["round", args.executor]
    result = {"executor": args.executor, "budget": args.budget, "batch_size": args.batch, "steps": args.steps,
              "dtype": args.dtype, "workers": 1, "config": "configs/build-sd21-base.yaml"}
    # 1. The generator: the SD 2.1-base architecture with random weights, in the Stable Diffusion layout.
    gen_dir = _generator(args, work, result)
    # 2. The round folder (bundle + manifest), as actgen-train writes one.
    round_dir = work / args.executor / "0"           # a trainer round folder: rounds/<r>/
    if not (round_dir / "hard_samples.json").is_file():
        round_dir.mkdir(parents=True, exist_ok=True)
        bb._write_round(round_dir)
    # 3. actgen-build, as a subprocess.
    cmd = _command(args, gen_dir, round_dir)
    result["command"] = shlex.join(cmd)
    update_json(args.json, key, result)
    log(f"running {result['command']}")
    start = time.perf_counter()
    rc, lines = _run(cmd, work, args.timeout)
    wall = time.perf_counter() - start
    result.update(rc=rc, wall_s=wall, images_per_s_wall=args.budget / wall if rc == 0 else None)
    # 4. What it wrote.
    _collect(result, lines, round_dir, args)
    update_json(args.json, key, result)
    log(f"round ({args.executor}): {({k: v for k, v in result.items() if k != 'tail'})}")
    return 0 if result["status"] == "ok" else 1


def _generator(args, work: Path, result: dict) -> Path:
    gen_dir = work / "generator"
    if not (gen_dir / "unet").is_dir():
        start = time.perf_counter()
        gen, plain = build(args, args.dtype)
        del plain
        gen.save_pretrained(gen_dir)
        del gen
        _free(args.device)
        result["generator_save_s"] = time.perf_counter() - start
        log(f"saved the generator to {gen_dir} in {result['generator_save_s']:.1f} s")
    result["generator_gib_on_disk"] = sum(f.stat().st_size for f in gen_dir.rglob("*") if f.is_file()) / GIB
    return gen_dir


def _command(args, gen_dir: Path, round_dir: Path) -> list[str]:
    sets = [f"generator.path={gen_dir}", f"generator.device={args.device}", f"generator.dtype={args.dtype}",
            f"guidance.num_steps={args.steps}", f"budget={args.budget}", f"batch_size={args.batch}",
            "schedule.enabled=false", "mode=actgen", f"output.samples_per_shard={args.batch}",
            f"output.min_shards={max(1, args.budget // args.batch)}", "output.overwrite=true",
            f"ray.executor={args.executor}", "ray.workers=1", f"ray.cpus_per_worker={args.cpus_per_worker}"]
    if args.num_cpus:
        sets.append(f"ray.num_cpus={args.num_cpus}")
    return [sys.executable, "-m", "actgen.builder.cli", "--config", str(REPO / "configs" / "build-sd21-base.yaml"),
            "--round-dir", str(round_dir)] + [x for s in sets for x in ("--set", s)]


def _run(cmd: list[str], work: Path, timeout: float) -> tuple:
    """``(rc or "timeout", output lines)``. Its own process group, so that a time-out ends it with
    every process it started (Ray's included); the pid file lets the shell script do the same if
    this process is killed first."""
    import threading

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    (work / "cli.pid").write_text(str(proc.pid))
    lines: list[str] = []

    def pump():
        for line in proc.stdout:
            print(f"  | {line}", end="", flush=True)
            lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(10.0, timeout - (time.perf_counter() - STARTED)))
    except subprocess.TimeoutExpired:
        rc = "timeout"
        log(f"actgen-build still running {timeout:.0f} s after this part began: killing its process group")
        try:
            os.killpg(proc.pid, 9)
        except OSError:
            pass
        proc.wait()
    reader.join(timeout=5)
    (work / "cli.pid").unlink(missing_ok=True)
    return rc, lines


def _collect(result: dict, lines: list[str], round_dir: Path, args) -> None:
    """The pipeline's own figures (rendering, worker start-up included), the index, the status."""
    rc = result["rc"]
    for line in lines:
        m = RENDER_LINE.search(line)
        if m:
            result.update(rendered_images=int(m[1]), shards=int(m[2]), render_s=float(m[3]),
                          render_images_per_s=int(m[1]) / float(m[3]) if float(m[3]) > 0 else None)
    index = round_dir / "shards" / "index.json"
    if index.is_file():
        data = load_json(index)
        result["index_num_samples"] = data.get("num_samples")
        result["index_image_size"] = data.get("image_size")
    status = load_json(round_dir / "build_status.json")
    if status:
        result["build_status"] = status
    sheet = round_dir / "shards" / "contact_sheet.png"
    if sheet.is_file() and args.copy_sheet:
        import shutil

        shutil.copyfile(sheet, Path(args.copy_sheet))
    result["status"] = "ok" if rc == 0 and result.get("index_num_samples") == args.budget else "failed"
    result["tail"] = [ln.rstrip()[:300] for ln in lines[-8:]] if result["status"] != "ok" else None
    if result["status"] != "ok":             # the CLI leaves its traceback in a file it names
        for line in lines:
            m = re.search(r"traceback in (\S+?\.log)", line)
            if m and Path(m[1]).is_file():
                result["traceback"] = Path(m[1]).read_text(errors="replace").splitlines()[-60:]
