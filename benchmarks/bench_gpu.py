"""The parts of the one prepared GPU check (``benchmarks/gpu_check.sh``), one subcommand each.

Each part runs in its own process (so that a hang or an out-of-memory in one cannot take the
others down, and the shell script can put a hard ``timeout`` on each) and merges its figures into
one JSON file (``--json``) as soon as it has them, so that whatever ran before a time-out is kept.

    env        versions, GPU name and memory
    samplers   txt2img / img2img / actgen (every row adversarial, contrastive bank full: the worst
               case for memory) and diffusers' StableDiffusionImg2ImgPipeline on the same
               components: images/s and peak GPU memory at one batch size (out-of-memory recorded)
    solvers    DDPM-40 against DDIM and DPM-Solver++ at 20 steps, and the adversarial term's cost
               (every image, half of them as in the §1.3 schedule's last round, decode at 256)
    sdxl       SDXL base's architecture at 1024²: txt2img, img2img, actgen (DDPM-40) and txt2img
               with DPM-Solver++ at 20 steps: images/s and peak memory
    nan        one actgen batch per dtype (float16, bfloat16): non-finite pixels and latents
    round      a full ``actgen-build`` round through Ray: saves the SD 2.1-base-architecture
               generator (random weights) in the Stable Diffusion layout, writes a round folder
               (random ``test_resnet`` bundle + hard-sample manifest over ``builtin:digits``), runs
               ``python -m actgen.builder.cli --round-dir ...`` as a subprocess and times it
    compile    txt2img with the UNet eager and under ``torch.compile``: compile time and images/s
    mark       record a part's exit status and wall time (called by the shell script)
    report     print the final table from the JSON

The SD 2.1-base architecture is built by ``bench_builder.build_components`` (random weights, tiny
tokenizer); ``--arch-dir`` points it at the component configs. Images made with random weights are
noise: these figures are cost (time, memory) and numerics of the code path, never quality.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PAPER_STEPS = 40
GIB = 2**30
STARTED = time.perf_counter()

from gpu_common import (_bench_builder, _common, _first_line, _free, _is_oom, _mem, _reset_peak, _setup,  # noqa: E402
                        _sync, _torch, build, load_json, log, update_json)
from gpu_round import cmd_round  # noqa: E402


# ------------------------------------------------------------------------------ env
def cmd_env(args) -> int:
    torch = _torch()
    env = {"python": platform.python_version(), "python_executable": sys.executable, "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
           "cpu_count": os.cpu_count(), "hostname": platform.node(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_total_gib=props.total_memory / GIB,
                   gpu_multiprocessors=props.multi_processor_count, gpu_capability=f"{props.major}.{props.minor}")
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("diffusers", "transformers", "huggingface_hub", "timm", "ray", "datasets", "webdataset", "omegaconf",
                 "pyarrow", "pandas", "numpy", "safetensors", "tokenizers", "peft", "fsspec", "triton"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    env["packages"] = versions
    modules = {}
    for name in ("actgen.shards", "actgen.builder.generator", "actgen.builder.sampler", "actgen.builder.config",
                 "diffusers", "ray", "ray.data", "datasets", "webdataset", "omegaconf"):
        try:
            mod = __import__(name, fromlist=["_"])
            modules[name] = getattr(mod, "__file__", None) or "namespace"
        except Exception as e:   # recorded, not fatal: the parts that need it fail on their own
            modules[name] = f"IMPORT FAILED: {_first_line(e)}"
    env["modules"] = modules
    import actgen.shards

    env["actgen_version"] = actgen.shards.__version__
    update_json(args.json, ["env"], env)
    for k, v in env.items():
        log(f"{k}: {v}")
    failed = [k for k, v in modules.items() if str(v).startswith("IMPORT FAILED")]
    return 1 if failed else 0


# ------------------------------------------------------------------------------ samplers
def cmd_samplers(args) -> int:
    torch = _torch()
    _setup(args)
    bb = _bench_builder(args.arch_dir)
    key = ["samplers", f"batch{args.batch}"]
    dtype_name = args.dtype
    gen, plain = build(args, dtype_name)
    classifier = bb.build_classifier("sd21", args.device)
    callers = bb.make_callers(gen, plain, classifier, args.steps, args.batch)
    modes = [m for m in args.modes.split(",") if m]
    _free(args.device)
    result = {"arch": "sd21-base (random weights)", "device": args.device, "dtype": dtype_name,
              "image_size": gen.image_size, "steps": args.steps, "guided_steps": bb._cfg(args.steps).scaled_guidance_steps,
              "batch": args.batch, "repeats": args.repeats, "cfg_rows_per_unet_call": 2 * args.batch,
              "resident_weights_gib": _mem(args.device).get("allocated_gib"),
              "note": ("peak memory includes the resident weights (generator + diffusers' UNet copy + resnet50); "
                       "actgen: every row adversarial and contrastive (bank of 1,024 latents per class)"),
              "modes": {}}
    update_json(args.json, key, result)
    ok = []
    for mode in modes:                       # warm-up, one mode at a time: peak memory and first-call time
        log(f"batch {args.batch}: warm-up {mode}")
        _reset_peak(args.device)
        start = time.perf_counter()
        try:
            images = callers[mode]()
            _sync(args.device)
            row = {"status": "ok", "warmup_s": time.perf_counter() - start, **_mem(args.device),
                   "nonfinite_pixels": int((~torch.isfinite(images)).sum())}
            del images
            ok.append(mode)
        except Exception as e:
            if not _is_oom(e):
                traceback.print_exc()
                row = {"status": "error", "error": _first_line(e), **_mem(args.device)}
            else:
                row = {"status": "OOM", "error": _first_line(e), **_mem(args.device)}
            del e
        _free(args.device)
        result["modes"][mode] = row
        log(f"  {mode}: {row}")
        update_json(args.json, key, result)
    times: dict[str, list[float]] = {m: [] for m in ok}
    for r in range(args.repeats):            # interleaved, so that drift hits every mode alike
        for mode in list(ok):
            _sync(args.device)
            start = time.perf_counter()
            try:
                callers[mode]()
                _sync(args.device)
            except Exception as e:           # e.g. out of memory on a fragmented allocator: keep the rest
                traceback.print_exc()
                result["modes"][mode].update(status="OOM" if _is_oom(e) else "error",
                                             error=f"in timed call {r + 1}: {_first_line(e)}")
                ok.remove(mode)
                del e
                _free(args.device)
                update_json(args.json, key, result)
                continue
            times[mode].append(time.perf_counter() - start)
            t = times[mode]
            med = statistics.median(t)
            result["modes"][mode].update(
                timed_calls=len(t), all_s=t, median_s=med, min_s=min(t), images_per_s=args.batch / med,
                s_per_image=med / args.batch, ms_per_step=1000 * med / args.steps,
                s_per_image_at_40_steps=(med / args.batch) * PAPER_STEPS / args.steps)
            update_json(args.json, key, result)
        log(f"batch {args.batch}: repeat {r + 1}/{args.repeats} done")
    m = result["modes"]
    if "median_s" in m.get("img2img", {}) and "median_s" in m.get("diffusers-img2img", {}):
        result["img2img_vs_diffusers"] = m["img2img"]["median_s"] / m["diffusers-img2img"]["median_s"]
    if "median_s" in m.get("actgen", {}) and "median_s" in m.get("img2img", {}):
        result["actgen_vs_img2img"] = m["actgen"]["median_s"] / m["img2img"]["median_s"]
    update_json(args.json, key, result)
    return 0 if all(m[x]["status"] in ("ok", "OOM") for x in modes) else 1


# ------------------------------------------------------------------------------ solvers
def cmd_solvers(args) -> int:
    """DDPM at --steps against DDIM and DPM-Solver++ at half of them (txt2img, img2img, actgen with
    every row adversarial), and the adversarial term's cost against img2img: on every image, on
    half of them (the §1.3 schedule's last round) and with the decode at half the side
    (``guidance.adversarial_decode_size``); all at one batch size, interleaved, median of repeats."""
    _setup(args)
    bb = _bench_builder(args.arch_dir)
    gen, plain = build(args, args.dtype)
    del plain
    _free(args.device)
    classifier = bb.build_classifier("sd21", args.device)
    key = ["solvers", f"batch{args.batch}"]
    try:
        table, cost = bb.sampler_callers(gen, classifier, args.steps, args.batch)
        rows, cost_rows = bb.time_samplers(table, cost, args.device, args.steps, args.batch, args.repeats,
                                           warmup=not args.no_warmup)
    except Exception as e:
        traceback.print_exc()
        update_json(args.json, key, {"status": "OOM" if _is_oom(e) else "error", "error": _first_line(e)})
        return 1
    update_json(args.json, key, {"status": "ok", "dtype": args.dtype, "image_size": gen.image_size, "steps": args.steps,
                                 "batch": args.batch, "repeats": args.repeats, "samplers": rows,
                                 "adversarial_cost": cost_rows})
    for r in rows:
        log(f"{r['sampler']:<10}{r['steps']:>4} {r['mode']:<8} {r['images_per_s']:.3f} images/s, "
            f"{r['speedup_vs_ddpm']:.2f}x DDPM-{args.steps}")
    for r in cost_rows:
        log(f"{r['variant']:<52} {r['images_per_s']:.3f} images/s, {r['time_vs_img2img']:.2f}x img2img's time")
    return 0


# ------------------------------------------------------------------------------ sdxl
def cmd_sdxl(args) -> int:
    """SDXL base's architecture (random weights) at --size: txt2img, img2img and actgen (every row
    adversarial) with DDPM at --steps, and txt2img with DPM-Solver++ at half of them; images/s and
    peak memory, one batch size; an out-of-memory is recorded per mode."""
    torch = _torch()
    _setup(args)
    bb = _bench_builder(args.arch_dir)
    from actgen.builder.config import GuidanceConfig
    from actgen.builder.sampler import GuidedSampler

    key = ["sdxl", f"batch{args.batch}"]
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    try:
        gen = bb.build_sdxl(args.device, dtype, args.size, init_device=args.device)
    except Exception as e:
        traceback.print_exc()
        update_json(args.json, key, {"status": "OOM" if _is_oom(e) else "error", "error": _first_line(e)})
        return 1
    result = {"arch": "sdxl-base (random weights)", "dtype": args.dtype, "image_size": gen.image_size,
              "steps": args.steps, "batch": args.batch, "repeats": args.repeats,
              "build_s": time.perf_counter() - start, "resident_weights_gib": _mem(args.device).get("allocated_gib"),
              "attention_layers": len(gen.attention.layers), "modes": {}}
    update_json(args.json, key, result)
    classifier = bb.build_classifier("sd21", args.device)
    names = [bb.NAMES[i % len(bb.NAMES)] for i in range(args.batch)]
    labels = [bb.NAMES.index(n) for n in names]
    prompts = [f"a photo of {n}" for n in names]
    guides = torch.rand(args.batch, 3, gen.image_size, gen.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cfg = GuidanceConfig(num_steps=args.steps, adversarial_chunk=1)
    fast = GuidanceConfig(num_steps=max(2, args.steps // 2), sampler="dpmpp_2m", adversarial_chunk=1)
    runs = {"txt2img": (cfg, "txt2img"), "img2img": (cfg, "img2img"), "actgen": (cfg, "actgen"),
            f"txt2img dpmpp_2m-{fast.num_steps}": (fast, "txt2img")}
    for name, (c, mode) in runs.items():
        sampler = GuidedSampler(gen, c, classifier if mode == "actgen" else None)
        times = []
        _reset_peak(args.device)
        try:
            for _ in range(1 + args.repeats):           # the first call is the warm-up
                _sync(args.device)
                t0 = time.perf_counter()
                out = sampler.sample(prompts, names, labels, list(range(args.batch)), [mode] * args.batch,
                                     adversarial=[True] * args.batch, guides=None if mode == "txt2img" else guides)
                _sync(args.device)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times[1:] or times)   # no repeats: the first call
            row = {"status": "ok", "all_s": times, "median_s": med, "images_per_s": args.batch / med,
                   "nonfinite_pixels": int((~torch.isfinite(out.images)).sum()), **_mem(args.device)}
            del out
        except Exception as e:
            traceback.print_exc()
            row = {"status": "OOM" if _is_oom(e) else "error", "error": _first_line(e), **_mem(args.device)}
            del e
        _free(args.device)
        result["modes"][name] = row
        log(f"sdxl {name}: {row}")
        update_json(args.json, key, result)
    m = result["modes"]
    if "median_s" in m.get("actgen", {}) and "median_s" in m.get("img2img", {}):
        result["actgen_vs_img2img"] = m["actgen"]["median_s"] / m["img2img"]["median_s"]
        update_json(args.json, key, result)
    return 0 if all(r["status"] in ("ok", "OOM") for r in m.values()) else 1


# ------------------------------------------------------------------------------ nan
def cmd_nan(args) -> int:
    torch = _torch()
    _setup(args)
    bb = _bench_builder(args.arch_dir)
    from actgen.builder.config import GuidanceConfig
    from actgen.builder.sampler import GuidedSampler, MemoryBank

    rc = 0
    for dtype_name in [d for d in args.dtypes.split(",") if d]:
        key = ["nan", dtype_name]
        row = {"batch": args.batch, "steps": args.steps, "mode": "actgen", "adversarial": "all rows"}
        try:
            gen, plain = build(args, dtype_name)
            del plain
            classifier = bb.build_classifier("sd21", args.device)
            cfg = GuidanceConfig(num_steps=args.steps)
            c, h, w = gen.latent_shape
            bank = MemoryBank(cfg.bank_capacity, cfg.bank_sample_size)
            names = [bb.NAMES[i % len(bb.NAMES)] for i in range(args.batch)]
            labels = [bb.NAMES.index(n) for n in names]
            for y in range(len(bb.NAMES)):         # a full bank, as in the sampler benchmark
                bank.add([y] * cfg.bank_capacity,
                         torch.randn(cfg.bank_capacity, c, h, w, generator=torch.Generator().manual_seed(y)))
            sampler = GuidedSampler(gen, cfg, classifier, bank)
            size = gen.image_size
            guides = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
            _free(args.device)
            _reset_peak(args.device)
            start = time.perf_counter()
            out = sampler.sample([f"a photo of {n}" for n in names], names, labels, list(range(args.batch)),
                                 ["actgen"] * args.batch, adversarial=[True] * args.batch, guides=guides)
            _sync(args.device)
            images, latents = out.images.float(), out.latents.float()
            fin = torch.isfinite(images)
            row.update(status="ok", seconds=time.perf_counter() - start,
                       nonfinite_pixels=int((~fin).sum()), pixels=images.numel(),
                       nonfinite_latents=int((~torch.isfinite(latents)).sum()), latents=latents.numel(),
                       images_with_nonfinite=int((~fin).flatten(1).any(1).sum()),
                       pixel_min=float(images[fin].min()) if fin.any() else None,
                       pixel_max=float(images[fin].max()) if fin.any() else None,
                       pixel_std=float(images[fin].std()) if fin.any() else None,
                       latent_abs_max=float(latents[torch.isfinite(latents)].abs().max())
                       if torch.isfinite(latents).any() else None,
                       **_mem(args.device))
            if row["nonfinite_pixels"] or row["nonfinite_latents"]:
                rc = 1
            del out, images, latents, sampler, gen, classifier, bank
        except Exception as e:
            traceback.print_exc()
            row.update(status="OOM" if _is_oom(e) else "error", error=_first_line(e), **_mem(args.device))
            rc = 1
            del e
        _free(args.device)
        log(f"nan {dtype_name}: {row}")
        update_json(args.json, key, row)
    return rc


# ------------------------------------------------------------------------------ compile
def cmd_compile(args) -> int:
    torch = _torch()
    _setup(args)
    from actgen.builder.config import GuidanceConfig
    from actgen.builder.sampler import GuidedSampler

    key = ["compile"]
    gen, plain = build(args, args.dtype)
    del plain
    _free(args.device)
    cfg = GuidanceConfig(num_steps=args.steps)
    sampler = GuidedSampler(gen, cfg)
    names = ["cat", "dog", "ship", "truck"]
    names = [names[i % 4] for i in range(args.batch)]

    def call():
        return sampler.sample([f"a photo of {n}" for n in names], names, [0] * args.batch, list(range(args.batch)),
                              ["txt2img"] * args.batch).images

    def timed():
        _sync(args.device)
        start = time.perf_counter()
        call()
        _sync(args.device)
        return time.perf_counter() - start

    result = {"mode": "txt2img", "dtype": args.dtype, "batch": args.batch, "steps": args.steps,
              "image_size": gen.image_size, "backend": args.backend,
              "what": "generator.compile: unet (nn.Module.compile in place, as a build applies it); the timestep "
                      "reaches the UNet as a 0-d tensor so that the 40 distinct step values do not each recompile"}
    result["eager_warmup_s"] = timed()
    eager = [timed() for _ in range(args.repeats)]
    result.update(eager_all_s=eager, eager_median_s=statistics.median(eager),
                  eager_images_per_s=args.batch / statistics.median(eager))
    update_json(args.json, key, result)
    log(f"eager: {eager}")

    # What generator.compile: unet does in a build (in place; the timestep reaches the UNet as a
    # 0-d tensor, so the 40 step values do not each recompile).
    gen.speed_up(compile="unet", backend=args.backend)
    try:
        import torch._dynamo.utils as dutils

        dutils.counters.clear()
    except Exception:
        dutils = None
    try:
        first = timed()
        result.update(compiled_first_call_s=first, compile_s_est=first - result["eager_median_s"])
        update_json(args.json, key, result)
        log(f"compiled first call (compile + run): {first:.1f} s")
        second = timed()
        result["compiled_second_call_s"] = second
        comp = [timed() for _ in range(args.repeats)]
        med = statistics.median(comp)
        result.update(status="ok", compiled_all_s=comp, compiled_median_s=med, compiled_images_per_s=args.batch / med,
                      speedup=result["eager_median_s"] / med)
        if dutils is not None:
            try:
                result["graph_breaks"] = {str(k)[:200]: v for k, v in dutils.counters["graph_break"].items()}
                result["unique_graphs"] = dutils.counters["stats"].get("unique_graphs")
                result["recompiles"] = {str(k)[:200]: v for k, v in dutils.counters["recompiles"].items()} \
                    if "recompiles" in dutils.counters else None
            except Exception as e:
                result["counters_error"] = _first_line(e)
    except Exception as e:
        traceback.print_exc()
        result.update(status="OOM" if _is_oom(e) else "error", error=_first_line(e))
    update_json(args.json, key, result)
    log(f"compile: {result}")
    return 0 if result.get("status") == "ok" else 1


# ------------------------------------------------------------------------------ mark / report
def cmd_mark(args) -> int:
    update_json(args.json, ["parts", args.part], {"rc": args.rc, "seconds": args.seconds,
                                                   "timed_out": args.rc in (124, 137), "note": args.note or None})
    return 0


def _f(x, fmt="{:.3f}"):
    return "-" if x is None else (fmt.format(x) if isinstance(x, (int, float)) else str(x))


def cmd_report(args) -> int:
    data = load_json(args.json)
    env = data.get("env", {})
    print("=" * 100)
    print(f"GPU check ({data.get('mode', '?')}): {env.get('gpu', 'no GPU')} | torch {env.get('torch')} | "
          f"python {env.get('python')} | diffusers {env.get('packages', {}).get('diffusers')} | "
          f"ray {env.get('packages', {}).get('ray')}")
    print("-- parts (rc, seconds)")
    for name, p in data.get("parts", {}).items():
        print(f"   {name:<14} rc={p.get('rc')} {_f(p.get('seconds'), '{:.0f}')} s"
              + (" TIMED OUT" if p.get("timed_out") else "") + (f" ({p['note']})" if p.get("note") else ""))
    for bkey, res in data.get("samplers", {}).items():
        print(f"-- samplers, {res.get('image_size')}² {res.get('dtype')}, {res.get('steps')} steps "
              f"({res.get('guided_steps')} guided), batch {res.get('batch')}, median of {res.get('repeats')} "
              f"(resident weights {_f(res.get('resident_weights_gib'), '{:.2f}')} GiB)")
        print(f"   {'sampler':<20}{'status':>8}{'images/s':>10}{'s/image':>10}{'s/img@40':>10}{'peak GiB':>10}{'NaN px':>8}")
        for mode, r in res.get("modes", {}).items():
            print(f"   {mode:<20}{r.get('status', '?'):>8}{_f(r.get('images_per_s')):>10}{_f(r.get('s_per_image')):>10}"
                  f"{_f(r.get('s_per_image_at_40_steps')):>10}{_f(r.get('peak_gpu_mem_gib'), '{:.2f}'):>10}"
                  f"{_f(r.get('nonfinite_pixels'), '{}'):>8}")
        if res.get("steps") != PAPER_STEPS:
            print(f"   (timed at {res.get('steps')} steps; s/img@40 scales the time per image to the paper's 40)")
        print(f"   img2img/diffusers time {_f(res.get('img2img_vs_diffusers'))} (target <= 1.05); "
              f"actgen/img2img time {_f(res.get('actgen_vs_img2img'))} (target <= 1.6)")
    for bkey, res in data.get("solvers", {}).items():
        print(f"-- solvers, {res.get('image_size')}² {res.get('dtype')}, batch {res.get('batch')}: {res.get('status')}"
              + (f" ({res['error']})" if res.get("error") else ""))
        for r in res.get("samplers", []):
            print(f"   {r['sampler']:<10}{r['steps']:>4} {r['mode']:<8}{_f(r.get('images_per_s')):>8} images/s "
                  f"x{_f(r.get('speedup_vs_ddpm'), '{:.2f}')} DDPM")
        for r in res.get("adversarial_cost", []):
            print(f"   {r['variant']:<52}{_f(r.get('images_per_s')):>8} images/s "
                  f"{_f(r.get('time_vs_img2img'), '{:.2f}')}x img2img's time")
    for bkey, res in data.get("sdxl", {}).items():
        print(f"-- SDXL architecture, {res.get('image_size')}² {res.get('dtype')}, {res.get('steps')} steps, batch "
              f"{res.get('batch')}: {res.get('status', '')} built in {_f(res.get('build_s'), '{:.0f}')} s, "
              f"weights {_f(res.get('resident_weights_gib'), '{:.1f}')} GiB" + (f" ({res['error']})" if res.get("error") else ""))
        for name, r in res.get("modes", {}).items():
            print(f"   {name:<22}{r.get('status', '?'):>8}{_f(r.get('images_per_s')):>10} images/s "
                  f"peak {_f(r.get('peak_gpu_mem_gib'), '{:.1f}')} GiB" + (f" ({r['error']})" if r.get("error") else ""))
    if data.get("nan"):
        print("-- NaN check (actgen batch, every row adversarial)")
        for dt, r in data["nan"].items():
            print(f"   {dt:<10} {r.get('status')}: non-finite pixels {r.get('nonfinite_pixels')}/{r.get('pixels')}, "
                  f"latents {r.get('nonfinite_latents')}/{r.get('latents')}, pixel range "
                  f"[{_f(r.get('pixel_min'), '{:.2f}')}, {_f(r.get('pixel_max'), '{:.2f}')}], "
                  f"{_f(r.get('seconds'), '{:.1f}')} s" + (f" ({r['error']})" if r.get("error") else ""))
    for ex, r in data.get("round", {}).items():
        print(f"-- actgen-build round ({ex}): {r.get('status')}, {r.get('budget')} images, rc {r.get('rc')}, "
              f"wall {_f(r.get('wall_s'), '{:.1f}')} s ({_f(r.get('images_per_s_wall'))} images/s incl. start-up), "
              f"render {_f(r.get('render_s'), '{:.1f}')} s ({_f(r.get('render_images_per_s'))} images/s)")
        for ln in (r.get("tail") or []) + (r.get("traceback") or [])[-15:]:
            print(f"   | {ln}")
    c = data.get("compile")
    if c:
        print(f"-- torch.compile UNet, txt2img batch {c.get('batch')}, {c.get('steps')} steps, backend {c.get('backend')}: "
              f"{c.get('status', 'incomplete')}; eager {_f(c.get('eager_images_per_s'))} images/s, compiled "
              f"{_f(c.get('compiled_images_per_s'))} images/s (x{_f(c.get('speedup'), '{:.2f}')}), first compiled call "
              f"{_f(c.get('compiled_first_call_s'), '{:.1f}')} s (compile ~{_f(c.get('compile_s_est'), '{:.1f}')} s), "
              f"second {_f(c.get('compiled_second_call_s'), '{:.1f}')} s" + (f" ({c['error']})" if c.get("error") else ""))
    print("=" * 100)
    return 0


# ------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("env")
    s.add_argument("--json", type=Path, required=True)
    s = sub.add_parser("samplers")
    _common(s)
    s.add_argument("--dtype", default="float16")
    s.add_argument("--modes", default="txt2img,img2img,actgen,diffusers-img2img")
    s = sub.add_parser("solvers")
    _common(s)
    s.add_argument("--dtype", default="float16")
    s.add_argument("--no-warmup", action="store_true", help="time the first calls (the CPU tryout: code path only)")
    s = sub.add_parser("sdxl")
    _common(s)
    s.add_argument("--dtype", default="float16")
    s = sub.add_parser("nan")
    _common(s)
    s.add_argument("--dtypes", default="float16,bfloat16")
    s = sub.add_parser("compile")
    _common(s)
    s.add_argument("--dtype", default="float16")
    s.add_argument("--backend", default="inductor")
    s = sub.add_parser("round")
    _common(s)
    s.add_argument("--dtype", default="float16")
    s.add_argument("--budget", type=int, default=32)
    s.add_argument("--executor", choices=["ray", "local"], default="ray")
    s.add_argument("--workdir", default="/tmp/gpu_check_round")
    s.add_argument("--cpus-per-worker", type=float, default=4)
    s.add_argument("--num-cpus", type=int, default=0)
    s.add_argument("--timeout", type=float, default=600,
                   help="seconds for this whole part; actgen-build is killed when they run out")
    s.add_argument("--copy-sheet", default=None)
    s = sub.add_parser("mark")
    s.add_argument("--json", type=Path, required=True)
    s.add_argument("--part", required=True)
    s.add_argument("--rc", type=int, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--note", default="")
    s = sub.add_parser("report")
    s.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    return {"env": cmd_env, "samplers": cmd_samplers, "solvers": cmd_solvers, "sdxl": cmd_sdxl, "nan": cmd_nan, "compile": cmd_compile, "round": cmd_round,
            "mark": cmd_mark, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
