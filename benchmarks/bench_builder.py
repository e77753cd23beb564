"""Builder benchmark: images/s of the guided sampler's modes against diffusers' own img2img.

Four samplers on the same components, the same number of denoising steps, batch and image size:

* ``txt2img``, ``img2img``, ``actgen``: :class:`actgen.builder.sampler.GuidedSampler`. ``actgen``
  has everything on: the attention mask, and gradient guidance on the first 10 of 40 steps
  (scaled with ``--steps``) with both the contrastive term (a memory bank of 1,024 latents per
  class) and the adversarial term (every image) through a timm classifier.
* ``diffusers-img2img``: ``StableDiffusionImg2ImgPipeline`` with a DDPM scheduler from the same
  config, ``strength=1.0`` so that it runs all ``--steps`` denoising steps (diffusers runs
  ``strength x steps``), CFG 7.5, SDPA attention everywhere, ``output_type="pt"``.

Each sampler renders ``--batch`` images per call, ``--repeats`` times after one warm-up call,
interleaved so that drift of a shared machine hits all alike; the figure is the median call.

Architectures: ``tiny`` (the random tiny generator, 32x32, on the CPU; always) and ``sd21``
(Stable Diffusion 2.1-base's real component configs from ``../shared/configs/sd21-base-arch``
with random weights and a tiny tokenizer, 512x512, float16; on CUDA when available, where the peak
GPU memory of each sampler is reported too). ``--ray-scaling`` also times ``actgen-build`` itself
(``run(cfg)`` on the tiny generator) with 1 and 2 Ray CPU workers.

    python benchmarks/bench_builder.py                      # tiny on CPU (+ sd21 when CUDA is there)
    python benchmarks/bench_builder.py --ray-scaling        # + Ray 1 vs 2 workers
    python benchmarks/bench_builder.py --arch sd21 --batch 8

Prints a table and writes ``benchmarks/results/builder.json``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SD21_ARCH = REPO.parent / "shared" / "configs" / "sd21-base-arch"
RESULTS = REPO / "benchmarks" / "results" / "builder.json"
NAMES = ["cat", "dog", "ship", "truck"]
MODES = ("txt2img", "img2img", "actgen", "diffusers-img2img")


# ------------------------------------------------------------------------------ components
def build_components(arch: str, device: str, dtype: torch.dtype, size: int = 512, init_device: str = "cpu"):
    """-> (our generator, a UNet copy with diffusers' default SDPA processors) on ``device``.

    ``size`` (sd21 only) changes nothing but the UNet's ``sample_size``: a quick check of the code
    path on a CPU, not a figure to report. ``init_device`` (sd21 only): where the random weights
    are drawn (``cuda`` takes seconds off building 1.3B parameters; the weights differ from the CPU's).
    """
    from actgen.builder.generator import DiffusersGenerator
    from actgen.builder.tiny import build_tiny_generator, tiny_tokenizer

    if arch == "tiny":
        gen = build_tiny_generator(seed=0, device=device)
        # The capture processors are installed already; the copy gets diffusers' SDPA back.
        return gen, _plain_copy(gen.unet)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    with torch.device(init_device):
        unet = UNet2DConditionModel.from_config({**UNet2DConditionModel.load_config(str(SD21_ARCH / "unet")),
                                                 "sample_size": size // 8})
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(SD21_ARCH / "vae")))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(SD21_ARCH / "text_encoder")))
    sched = json.loads((SD21_ARCH / "scheduler" / "scheduler_config.json").read_text())
    # No tokenizer ships with the architecture: the tiny one's ids all lie inside CLIP's vocabulary,
    # and the cost per step does not depend on which ids they are.
    plain_unet = _plain_copy(unet)
    gen = DiffusersGenerator(unet, vae, te, tiny_tokenizer(), sched, device=device, dtype=dtype, name="sd21-base-arch")
    return gen, plain_unet


SDXL_ARCH = REPO / "tests" / "configs" / "sdxl-base-arch"


def build_sdxl(device: str, dtype: torch.dtype, size: int = 1024, init_device: str = "cpu"):
    """SDXL base's full architecture from ``tests/configs/sdxl-base-arch`` with random weights drawn
    directly in ``dtype`` on ``init_device`` (a float32 UNet alone is 10.3 GB), the VAE in float32
    (SDXL's overflows in float16; the generator keeps it there, force_upcast), images of ``size``²."""
    from actgen.builder.generator_sdxl import build_sdxl_from_configs

    return build_sdxl_from_configs(SDXL_ARCH, image_size=size, dtype=dtype, vae_dtype=torch.float32,
                                   init_device=init_device, device=device, name="sdxl-base-arch")


def _plain_copy(unet):
    """A copy of the UNet before our attention capture is installed (diffusers' SDPA processors)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    plain = copy.deepcopy(unet)
    plain.set_attn_processor(AttnProcessor2_0())
    return plain


def _place_like(module, gen):
    """On the generator's device and dtype, cast only when needed (diffusers warns on any cast)."""
    module = module.to(gen.device)
    return module if next(module.parameters()).dtype == gen.dtype else module.to(gen.dtype)


def build_classifier(arch: str, device: str):
    import timm

    from actgen.builder.sampler import GuidanceClassifier

    torch.manual_seed(0)
    name, size = ("test_resnet", 32) if arch == "tiny" else ("resnet50", 224)
    model = timm.create_model(name, pretrained=False, num_classes=len(NAMES)).to(device).eval()
    return GuidanceClassifier(model=model, input_size=(size, size), mean=(0.485, 0.456, 0.406),
                              std=(0.229, 0.224, 0.225))


def diffusers_pipeline(gen, plain_unet):
    from diffusers import DDPMScheduler, StableDiffusionImg2ImgPipeline

    scheduler = DDPMScheduler.from_config(gen.scheduler_config, clip_sample=False, timestep_spacing="leading")
    plain_unet = _place_like(plain_unet, gen)
    pipe = StableDiffusionImg2ImgPipeline(vae=gen.vae, text_encoder=gen.text_encoder, tokenizer=gen.tokenizer,
                                          unet=plain_unet, scheduler=scheduler,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------ timing
def make_callers(gen, plain_unet, classifier, steps: int, batch: int):
    """One zero-argument callable per mode, each rendering one batch."""
    from actgen.builder.config import GuidanceConfig
    from actgen.builder.bank import MemoryBank
    from actgen.builder.sampler import GuidedSampler

    dev = gen.device
    size = gen.image_size
    cfg = GuidanceConfig(num_steps=steps)
    names = [NAMES[i % len(NAMES)] for i in range(batch)]
    labels = [NAMES.index(n) for n in names]
    prompts = [f"a photo of {n}" for n in names]
    seeds = list(range(batch))
    guides = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bank = MemoryBank(cfg.bank_capacity, cfg.bank_sample_size)
    c, h, w = gen.latent_shape
    for y in range(len(NAMES)):
        bank.add([y] * cfg.bank_capacity, torch.randn(cfg.bank_capacity, c, h, w, generator=torch.Generator().manual_seed(y)))
    plain = GuidedSampler(gen, cfg)
    guided = GuidedSampler(gen, cfg, classifier, copy.deepcopy(bank))
    # The adversarial decode of the whole batch at once, as before guidance.adversarial_chunk.
    unchunked = GuidedSampler(gen, dataclasses.replace(cfg, adversarial_chunk=batch), classifier, copy.deepcopy(bank))
    pipe = diffusers_pipeline(gen, plain_unet)

    def ours(mode):
        sampler = {"actgen": guided, "actgen-unchunked": unchunked}.get(mode, plain)
        mode = "actgen" if mode == "actgen-unchunked" else mode

        # The actgen bank stays at 1,024 latents per class (FIFO), so every call costs the same.
        def call():
            return sampler.sample(prompts, names, labels, seeds, [mode] * batch, adversarial=[True] * batch,
                                  guides=guides if mode != "txt2img" else None).images
        return call

    def theirs():
        gens = [torch.Generator(device=dev).manual_seed(s) for s in seeds]
        return pipe(prompt=prompts, image=(guides + 1) / 2, strength=1.0, num_inference_steps=steps,
                    guidance_scale=cfg.cfg_scale, generator=gens, output_type="pt").images

    return {"txt2img": ours("txt2img"), "img2img": ours("img2img"), "actgen": ours("actgen"),
            "actgen-unchunked": ours("actgen-unchunked"), "diffusers-img2img": theirs}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_modes(callers: dict, device: str, repeats: int, warmup: bool = True) -> dict[str, dict]:
    cuda = torch.device(device).type == "cuda"
    times: dict[str, list[float]] = {m: [] for m in callers}
    peaks: dict[str, float] = {}
    for mode, call in (callers.items() if warmup else ()):   # warm-up (kernels, caches, prompt embeddings)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        call()
        _sync(device)
        if cuda:
            peaks[mode] = torch.cuda.max_memory_allocated() / 2**30
    for _ in range(repeats):
        for mode, call in callers.items():        # interleaved: drift hits every mode alike
            _sync(device)
            start = time.perf_counter()
            call()
            _sync(device)
            times[mode].append(time.perf_counter() - start)
    return {m: {"median_s": statistics.median(t), "min_s": min(t), "all_s": t,
                **({"peak_gpu_mem_gib": peaks[m]} if m in peaks else {})} for m, t in times.items()}


def bench_arch(arch: str, device: str, steps: int, batch: int, repeats: int, size: int = 512) -> dict:
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    gen, plain_unet = build_components(arch, device, dtype, size)
    classifier = build_classifier(arch, device)
    callers = {m: c for m, c in make_callers(gen, plain_unet, classifier, steps, batch).items() if m in MODES}
    stats = time_modes(callers, device, repeats)
    rows = []
    for mode in MODES:
        s = stats[mode]
        rows.append({"mode": mode, "images_per_s": batch / s["median_s"], "s_per_image": s["median_s"] / batch,
                     "ms_per_step": 1000 * s["median_s"] / steps, **s})
    by = {r["mode"]: r for r in rows}
    return {"arch": arch, "device": device, "dtype": str(dtype).removeprefix("torch."), "image_size": gen.image_size,
            "steps": steps, "guided_steps": _cfg(steps).scaled_guidance_steps, "batch": batch,
            "repeats": repeats, "rows": rows,
            "img2img_vs_diffusers": by["img2img"]["median_s"] / by["diffusers-img2img"]["median_s"],
            "actgen_vs_img2img": by["actgen"]["median_s"] / by["img2img"]["median_s"]}


# ------------------------------------------------------------------------------ samplers and cost
SOLVERS = (("ddpm", 1.0), ("ddim", 0.5), ("dpmpp_2m", 0.5))
"""(guidance.sampler, fraction of ``--steps``): the method's DDPM at the full count, DDIM and
DPM-Solver++ at half of it (40 -> 20), as diffusers users run them."""


def sampler_callers(gen, classifier, steps: int, batch: int) -> dict:
    """``{(solver, steps, mode): callable}`` for the sampler table, and ``{name: callable}`` for the
    adversarial-cost table (DDPM at ``steps``), each rendering one batch with the same prompts,
    guides, bank and seeds."""
    from actgen.builder.bank import MemoryBank
    from actgen.builder.config import GuidanceConfig
    from actgen.builder.sampler import GuidedSampler

    size = gen.image_size
    names = [NAMES[i % len(NAMES)] for i in range(batch)]
    labels = [NAMES.index(n) for n in names]
    prompts = [f"a photo of {n}" for n in names]
    seeds = list(range(batch))
    guides = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    c, h, w = gen.latent_shape

    def bank(cfg):
        b = MemoryBank(cfg.bank_capacity, cfg.bank_sample_size)
        for y in range(len(NAMES)):
            b.add([y] * cfg.bank_capacity,
                  torch.randn(cfg.bank_capacity, c, h, w, generator=torch.Generator().manual_seed(y)))
        return b

    def caller(cfg, mode, adversarial):
        sampler = GuidedSampler(gen, cfg, classifier, bank(cfg)) if mode == "actgen" else GuidedSampler(gen, cfg)

        def call():
            return sampler.sample(prompts, names, labels, seeds, [mode] * batch, adversarial=adversarial,
                                  guides=guides if mode != "txt2img" else None).images
        return call

    every = [True] * batch
    table = {}
    for solver, fraction in SOLVERS:
        n = max(2, round(steps * fraction))
        cfg = GuidanceConfig(num_steps=n, sampler=solver)
        for mode in ("txt2img", "img2img", "actgen"):
            table[(solver, n, mode)] = caller(cfg, mode, every)
    base = GuidanceConfig(num_steps=steps)
    half = [i % 2 == 0 for i in range(batch)]
    # Half the side: the adversarial decode at a quarter of the pixels (guidance.adversarial_decode_size).
    cheap = dataclasses.replace(base, adversarial_decode_size=size // 2)
    cost = {
        "img2img": caller(base, "img2img", every),
        "actgen, contrastive only": caller(dataclasses.replace(base, use_adversarial=False), "actgen", every),
        "actgen, adversarial on every image": caller(base, "actgen", every),
        "actgen, adversarial on half (last round of §1.3)": caller(base, "actgen", half),
        f"actgen, every image, decode {size // 2}": caller(cheap, "actgen", every),
        f"actgen, half, decode {size // 2}": caller(cheap, "actgen", half),
    }
    return table, cost


def time_samplers(table: dict, cost: dict, device: str, steps: int, batch: int, repeats: int,
                  warmup: bool = True) -> tuple[list[dict], list[dict]]:
    """Time :func:`sampler_callers`' two tables together (interleaved) -> (solver rows with the
    speed-up over DDPM at ``steps`` in the same mode, cost rows with the time over img2img's)."""
    stats = time_modes({f"{s}/{n}/{m}": table[(s, n, m)] for s, n, m in table} | cost, device, repeats, warmup=warmup)
    rows = []
    for s, n, m in table:
        t = stats[f"{s}/{n}/{m}"]["median_s"]
        rows.append({"sampler": s, "steps": n, "mode": m, "images_per_s": batch / t, "s_per_image": t / batch,
                     "speedup_vs_ddpm": stats[f"ddpm/{steps}/{m}"]["median_s"] / t, **stats[f"{s}/{n}/{m}"]})
    img2img = stats["img2img"]["median_s"]
    cost_rows = [{"variant": k, "images_per_s": batch / stats[k]["median_s"],
                  "time_vs_img2img": stats[k]["median_s"] / img2img, **stats[k]} for k in cost]
    return rows, cost_rows


def bench_samplers(arch: str, device: str, steps: int, batch: int, repeats: int, size: int = 512) -> dict:
    """Images/s of each solver at its step count (txt2img, img2img, actgen), as a ratio to DDPM at
    ``steps`` in the same mode; and the adversarial term's cost as a ratio to img2img."""
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    gen, _ = build_components(arch, device, dtype, size)
    classifier = build_classifier(arch, device)
    table, cost = sampler_callers(gen, classifier, steps, batch)
    rows, cost_rows = time_samplers(table, cost, device, steps, batch, repeats)
    return {"arch": arch, "device": device, "dtype": str(dtype).removeprefix("torch."), "image_size": gen.image_size,
            "steps": steps, "batch": batch, "repeats": repeats, "samplers": rows, "adversarial_cost": cost_rows}


def print_samplers(result: dict) -> None:
    print(f"\nsamplers: {result['arch']} {result['image_size']}x{result['image_size']} on {result['device']} "
          f"({result['dtype']}), batch {result['batch']}, median of {result['repeats']}")
    print(f"{'sampler':<12}{'steps':>6}{'mode':>10}{'images/s':>10}{'x DDPM':>9}")
    for r in result["samplers"]:
        print(f"{r['sampler']:<12}{r['steps']:>6}{r['mode']:>10}{r['images_per_s']:>10.3f}{r['speedup_vs_ddpm']:>9.2f}")
    print(f"\nadversarial cost (DDPM, {result['steps']} steps)")
    print(f"{'variant':<52}{'images/s':>10}{'x img2img time':>16}")
    for r in result["adversarial_cost"]:
        print(f"{r['variant']:<52}{r['images_per_s']:>10.3f}{r['time_vs_img2img']:>16.2f}")


def _cfg(steps):
    from actgen.builder.config import GuidanceConfig

    return GuidanceConfig(num_steps=steps)


# ------------------------------------------------------------------------------ FLOP model
def flop_model(steps: int = 40, guided: int = 10, classifier: str = "resnet50", classifier_size: int = 224,
               small_classifier_size: int = 32, cheap_decode_size: int = 64, horizons=(4, 20)) -> dict:
    """TFLOPs per image of each sampler on SD 2.1-base at 512x512, counted with torch's
    FlopCounterMode on the meta device (no weights, no compute: runs anywhere in seconds).

    Per image: the UNet runs on 2 rows (classifier-free guidance) every step; a guided step
    also back-propagates to the prompt embeddings through the UNet and, for the adversarial term,
    decodes x0_hat with the VAE and back-propagates through decoder and classifier. A GPU that is
    compute-bound takes time in proportion.

    The ``small`` rows take a classifier of ``small_classifier_size``² input (CIFAR's 32²: the
    paper's CIFAR recipe renders at 512² too) with the adversarial decode at full size (the
    method) and with ``guidance.adversarial_decode_size: cheap_decode_size`` (x0_hat's latents
    resized to cheap_decode_size / 8 before the decode). ``decode 256`` is the same option at 256
    for the ``classifier_size`` classifier, whose input (224²) is smaller than 256 anyway.

    ``schedule_ratio_to_img2img``: a round's expected cost under the §1.3 mode mixing
    (:func:`schedule_cost`) for each horizon in ``horizons``: its worst (last) round and its mean.
    """
    import timm
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(SD21_ARCH / "unet")))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(SD21_ARCH / "vae")))
        clf = timm.create_model(classifier, pretrained=False, num_classes=1000)
    for m in (unet, vae, clf):
        m.requires_grad_(False).eval()

    def tflops(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e12

    def meta(*shape, grad=False):
        return torch.empty(*shape, device="meta").requires_grad_(grad)

    x, emb = meta(2, 4, 64, 64), meta(2, 77, 1024)
    unet_fwd = tflops(lambda: unet(x, 500, encoder_hidden_states=emb).sample)
    emb_g = meta(2, 77, 1024, grad=True)
    unet_fwd_bwd = tflops(lambda: unet(x, 500, encoder_hidden_states=emb_g).sample.sum().backward())
    encode = tflops(lambda: vae.encode(meta(1, 3, 512, 512)).latent_dist.mean)
    decode = tflops(lambda: vae.decode(meta(1, 4, 64, 64)).sample)
    decode_bwd = tflops(lambda: clf(torch.nn.functional.interpolate(
        vae.decode(meta(1, 4, 64, 64, grad=True)).sample, size=(classifier_size, classifier_size),
        mode="bilinear")).sum().backward())

    def decode_clf_bwd(latent_side: int, size: int) -> float:
        return tflops(lambda: clf(torch.nn.functional.interpolate(
            vae.decode(meta(1, 4, latent_side, latent_side, grad=True)).sample, size=(size, size),
            mode="bilinear")).sum().backward())

    half_decode = decode_clf_bwd(32, classifier_size)      # adversarial_decode_size: 256
    small_full = decode_clf_bwd(64, small_classifier_size)
    small_cheap = decode_clf_bwd(cheap_decode_size // 8, small_classifier_size)
    plain = steps * unet_fwd
    contra = (steps - guided) * unet_fwd + guided * unet_fwd_bwd
    rows = {
        "txt2img": plain + decode,
        "img2img": encode + plain + decode,
        "diffusers-img2img": encode + plain + decode,
        "actgen (contrastive only)": encode + contra + decode,
        "actgen (contrastive + adversarial)": encode + contra + decode + guided * decode_bwd,
        f"actgen (contrastive + adversarial, decode 256)": encode + contra + decode + guided * half_decode,
        f"actgen (adv, {classifier}@{small_classifier_size}, decode 512)": encode + contra + decode + guided * small_full,
        f"actgen (adv, {classifier}@{small_classifier_size}, decode {cheap_decode_size})":
            encode + contra + decode + guided * small_cheap,
    }
    parts = {"unet_cfg_step": unet_fwd, "unet_cfg_step_with_embedding_grad": unet_fwd_bwd, "vae_encode": encode,
             "vae_decode": decode, f"vae_decode+{classifier}@{classifier_size}_fwd_bwd": decode_bwd,
             f"vae_decode+{classifier}@{small_classifier_size}_fwd_bwd": small_full,
             f"vae_decode@{cheap_decode_size}+{classifier}@{small_classifier_size}_fwd_bwd": small_cheap}
    parts[f"vae_decode@256+{classifier}@{classifier_size}_fwd_bwd"] = half_decode
    schedule = {}
    for name, adv in (("decode 512 (the method)", rows["actgen (contrastive + adversarial)"]),
                      ("decode 256", rows["actgen (contrastive + adversarial, decode 256)"])):
        schedule[name] = {f"horizon {h}": schedule_cost(rows["txt2img"], rows["actgen (contrastive only)"], adv, h,
                                                        rows["img2img"]) for h in horizons}
    return {"steps": steps, "guided_steps": guided, "tflops_per_image": rows, "parts_tflops": parts,
            "ratio_to_img2img": {k: v / rows["img2img"] for k, v in rows.items()}, "schedule_ratio_to_img2img": schedule}


def schedule_cost(txt2img: float, contrastive: float, adversarial: float, horizon: int, img2img: float) -> dict:
    """Expected cost per image of an actgen round under the §1.3 mode mixing, as a ratio to an
    img2img round of the same size: per round r the text-to-image share s_r and, among guided
    images, the adversarial probability 0.5 - s_r (builder.schedules.draw_modes)."""
    from actgen.builder.schedules import random_txt2img_share

    per_round = []
    for r in range(horizon):
        share = random_txt2img_share(r, horizon)
        adv = (1 - share) * (0.5 - share)
        per_round.append((share * txt2img + adv * adversarial + (1 - share - adv) * contrastive) / img2img)
    return {"per_round": per_round, "worst_round": max(per_round), "mean": sum(per_round) / horizon}


# ------------------------------------------------------------------------------ Ray scaling
def _write_round(directory: Path) -> None:
    """A digits round (random test_resnet bundle + 40 hard samples), as actgen-train writes one."""
    import timm

    from actgen.shards.bundle import BundleConfig, write_bundle
    from actgen.shards.manifest import HardSample, HardSampleManifest, ManifestHeader, write_manifest
    from actgen.shards.sources import DataSource, load_source

    images = load_source(DataSource())
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    sha = write_bundle(directory / "checkpoint", model.state_dict(), BundleConfig(
        architecture="test_resnet", num_classes=10, class_names=images.class_names, input_size=(3, 32, 32),
        mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", dataset_fingerprint=images.fingerprint,
        round=0, epoch=0))
    samples = [HardSample(id=images.sample_id(i), label=images.label(i),
                          class_name=images.class_names[images.label(i)], predicted=0, prob_true=0.1, loss=2.3)
               for i in range(0, 400, 10)]
    header = ManifestHeader(dataset=dataclasses.asdict(images.source), dataset_fingerprint=images.fingerprint,
                            class_names=images.class_names, split_seed=0, holdout_fraction=0.1, num_evaluated=180,
                            checkpoint_sha256=sha, round=0, epoch=0)
    write_manifest(directory / "hard_samples.json", HardSampleManifest(header=header, samples=samples))


def bench_ray_scaling(steps: int, budget: int) -> list[dict]:
    import ray

    from actgen.builder.config import load_config
    from actgen.builder.pipeline import run

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _write_round(tmp / "round")
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        try:
            for workers in (1, 2):
                cfg = load_config(None, [
                    f"checkpoint={tmp / 'round' / 'checkpoint'}", f"manifest={tmp / 'round' / 'hard_samples.json'}",
                    f"output.path={tmp / f'out{workers}'}", "generator.path=tiny", f"guidance.num_steps={steps}",
                    f"budget={budget}", "batch_size=4", "output.samples_per_shard=8", "mode=actgen",
                    "bank_scope=shard", "ray.executor=ray", f"ray.workers={workers}", "output.contact_sheet=0"])
                result = run(cfg)
                busy = sum(result.shard_seconds.values()) / workers
                rows.append({"workers": workers, "images": budget, "wall_s": result.seconds,
                             "images_per_s": budget / result.seconds, "busy_images_per_s": budget / busy})
        finally:
            ray.shutdown()
    for r in rows:
        r["speedup"] = r["images_per_s"] / rows[0]["images_per_s"]
        r["busy_speedup"] = r["busy_images_per_s"] / rows[0]["busy_images_per_s"]
    return rows


# ------------------------------------------------------------------------------ report
def print_table(result: dict) -> None:
    print(f"\n{result['arch']} {result['image_size']}x{result['image_size']} on {result['device']} "
          f"({result['dtype']}), {result['steps']} steps ({result['guided_steps']} guided), batch {result['batch']}, "
          f"median of {result['repeats']}")
    mem = "peak_gpu_mem_gib" in result["rows"][0]
    print(f"{'sampler':<20}{'images/s':>10}{'s/image':>10}{'ms/step':>10}" + (f"{'peak GiB':>10}" if mem else ""))
    for r in result["rows"]:
        print(f"{r['mode']:<20}{r['images_per_s']:>10.3f}{r['s_per_image']:>10.3f}{r['ms_per_step']:>10.1f}"
              + (f"{r['peak_gpu_mem_gib']:>10.2f}" if mem else ""))
    print(f"img2img / diffusers img2img time: {result['img2img_vs_diffusers']:.3f} (target <= 1.05)")
    print(f"actgen / img2img time:            {result['actgen_vs_img2img']:.3f} (target <= 1.6)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=["tiny", "sd21", "auto"], default="auto",
                   help="auto: tiny on the CPU, plus sd21 on CUDA when available")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=None, help="images per call (tiny: 4, sd21: 4)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sd21-size", type=int, default=512,
                   help="sd21 image side (512 = the real cost; smaller only to check the code path on a CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared machine)")
    p.add_argument("--ray-scaling", action="store_true", help="also time run(cfg) with 1 and 2 Ray CPU workers")
    p.add_argument("--no-flops", action="store_true", help="skip the SD 2.1-base FLOP model (meta device)")
    p.add_argument("--samplers", action="store_true",
                   help="also time DDPM at --steps against DDIM and DPM-Solver++ at half of them, and the "
                        "adversarial term's cost (every image, half of them, a decode at half the side)")
    p.add_argument("--only-samplers", action="store_true", help="--samplers without the mode table")
    p.add_argument("--ray-steps", type=int, default=20)
    p.add_argument("--ray-budget", type=int, default=96)
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.samplers = args.samplers or args.only_samplers
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    runs = []
    if args.arch in ("tiny", "auto"):
        runs.append(("tiny", "cpu", args.batch or 4))
    if args.arch == "sd21" or (args.arch == "auto" and cuda):
        runs.append(("sd21", "cuda" if cuda else "cpu", args.batch or 4))
    results = []
    for arch, device, batch in ([] if args.only_samplers else runs):
        result = bench_arch(arch, device, args.steps, batch, args.repeats, args.sd21_size)
        print_table(result)
        results.append(result)
    flops = None
    if not args.no_flops:
        flops = flop_model(steps=args.steps, guided=_cfg(args.steps).scaled_guidance_steps)
        print(f"\nSD 2.1-base 512x512, FLOPs per image (counted on the meta device), {flops['steps']} steps, "
              f"{flops['guided_steps']} guided")
        print(f"{'sampler':<44}{'TFLOPs':>10}{'x img2img':>11}")
        for k, v in flops["tflops_per_image"].items():
            print(f"{k:<44}{v:>10.1f}{flops['ratio_to_img2img'][k]:>11.2f}")
        print("parts (TFLOPs): " + ", ".join(f"{k} {v:.2f}" for k, v in flops["parts_tflops"].items()))
        print("\nactgen rounds under the §1.3 mode mixing, time of an img2img round = 1 (FLOP model)")
        for name, by_h in flops["schedule_ratio_to_img2img"].items():
            for h, v in by_h.items():
                print(f"  {name:<26}{h:<12} worst round {v['worst_round']:.2f}   mean {v['mean']:.2f}")
    sampler_results = []
    if args.samplers:
        for arch, device, batch in runs:
            r = bench_samplers(arch, device, args.steps, batch, args.repeats, args.sd21_size)
            print_samplers(r)
            sampler_results.append(r)
    scaling = None
    if args.ray_scaling:
        scaling = bench_ray_scaling(args.ray_steps, args.ray_budget)
        print(f"\nactgen-build on Ray, tiny generator, actgen mode, {args.ray_steps} steps, "
              f"{args.ray_budget} images, 1 CPU per worker")
        print(f"{'workers':<10}{'wall s':>10}{'images/s':>10}{'speedup':>10}{'busy img/s':>12}{'busy speedup':>14}")
        for r in scaling:
            print(f"{r['workers']:<10}{r['wall_s']:>10.1f}{r['images_per_s']:>10.2f}{r['speedup']:>10.2f}"
                  f"{r['busy_images_per_s']:>12.2f}{r['busy_speedup']:>14.2f}")
    env = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
           "threads": args.threads, "cuda": torch.cuda.get_device_name(0) if cuda else None,
           "load_avg": os.getloadavg(), "argv": sys.argv[1:]}
    try:
        import diffusers
        env["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"environment": env, "samplers": results, "sd21_flops": flops, "sampler_table": sampler_results,
                                       "ray_scaling": scaling}, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
