"""The conditions a comparison can run: what each one changes in ``actgen-train`` and
``actgen-build``, as config overrides.

Every condition trains the same classifier on the same labeled images, on the same schedule and
seed; they differ only in where extra training images come from (or whether any are held out).
``{budget}`` in an override is the run's images per round; ``{budget_small}`` a third of it.

=====================  =============================================================================
real-all               every labeled image from the start: no hold-out, no rounds, no generation
                       (what a user does without ActGen)
real                   the hold-out kept out until the merge epoch, no generation (random
                       generation's 0-image anchor)
real-steps             ``real`` with as many extra real draws per epoch as the synthetic pool adds
random                 text-to-image of classes drawn evenly (the paper's random baseline)
txt2img                text-to-image of the hard samples' classes
img2img                image guidance from the hard samples, no mask and no losses
guide-copy             the planned guide images themselves (builder ``mode: copy``), through the
                       paper's allocation, shards and pool: no generation (tells generation apart
                       from early use of the held-out mistakes)
actgen                 the method with the paper's allocation rule (per-round schedules, the run's bank)
actgen-balanced        the method, the budget spread evenly over the classes
actgen-train-search    the method, rounds searching the training images (loss top-k with the
                       round's classifier, k = the round's budget): nothing withheld from training
actgen-…               ablations, selection rules and fidelity options (below)
=====================  =============================================================================
"""
from __future__ import annotations

from typing import Optional

Overrides = tuple[list[str], Optional[list[str]]]
"""(trainer overrides, builder overrides); builder None = no synthetic data."""

# The paper's rule, named: the builder's default allocation is `balanced`.
ACTGEN = ["mode=actgen", "schedule.enabled=true", "allocation.policy=paper"]
NO_HOLDOUT = ["data.holdout_fraction=0"]
# The paper's search, named for every hold-out condition: the trainer's default is
# `rounds.search: train` with `loss` top-64, and a condition must mean the same whatever the
# defaults are (the plan's train config gives `data.holdout_fraction`).
HOLDOUT = ["rounds.search=holdout", "rounds.selection.rule=misclassified", "rounds.selection.k=null"]

_CONDITIONS: dict[str, Overrides] = {
    "real-all": (NO_HOLDOUT + ["rounds.enabled=false"], None),
    "real": ([], None),
    "real-steps": (["synthetic.placebo_per_round={budget}"], None),
    "random": ([], ["mode=txt2img", "targets=uniform", "schedule.enabled=false"]),
    "txt2img": ([], ["mode=txt2img", "schedule.enabled=false"]),
    "img2img": ([], ["mode=img2img", "schedule.enabled=false"]),
    "guide-copy": ([], ["mode=copy", "schedule.enabled=false", "allocation.policy=paper"]),
    "actgen": ([], ACTGEN),
    "actgen-balanced": ([], ACTGEN + ["allocation.policy=balanced"]),
    "actgen-train-search": (NO_HOLDOUT + ["rounds.search=train", "rounds.selection.rule=loss",
                                          "rounds.selection.k={budget}"], ACTGEN),
    "actgen-no-mask": ([], ACTGEN + ["guidance.use_mask=false"]),
    "actgen-no-contrastive": ([], ACTGEN + ["guidance.use_contrastive=false"]),
    "actgen-no-adversarial": ([], ACTGEN + ["guidance.use_adversarial=false"]),
    "actgen-no-schedule": ([], ["mode=actgen", "schedule.enabled=false"]),
    "actgen-bank-shard": ([], ACTGEN + ["bank_scope=shard"]),
    "actgen-sel-loss": (["rounds.selection.rule=loss", "rounds.selection.k=16"], ACTGEN),
    "actgen-sel-entropy": (["rounds.selection.rule=entropy", "rounds.selection.k=16"], ACTGEN),
    "actgen-sel-margin": (["rounds.selection.rule=margin", "rounds.selection.k=16"], ACTGEN),
    "actgen-sel-cap": (["rounds.selection.drop_hardest=0.25"], ACTGEN),
    "actgen-sel-start": (["rounds.selection.min_holdout_acc=0.5"], ACTGEN),
    "actgen-per-sample-4": ([], ACTGEN + ["max_renders_per_sample=4"]),
    "actgen-balanced-train": ([], ACTGEN + ["allocation.policy=balanced", "allocation.fill=train"]),
    "actgen-mixed": ([], ACTGEN + ["allocation.policy=mixed", "allocation.random_fraction=0.5"]),
    "actgen-class-balance": (["synthetic.class_balance=true"], ACTGEN),
    "actgen-margin-scaled": ([], ACTGEN + ["guidance.margin_scale=latent_dim"]),
    "actgen-repel": ([], ACTGEN + ["guidance.repel_within_batch=true"]),
    "actgen-small-rounds": (["rounds.every=1"], ACTGEN + ["budget={budget_small}"]),
    # A faster solver at about half the steps (the digits builder runs DDPM at 25), and the
    # adversarial decode at half the side (the digits' x̂0 is 3x8x8, decoded at 4x4).
    "actgen-dpmpp": ([], ACTGEN + ["guidance.sampler=dpmpp_2m", "guidance.num_steps=13"]),
    "actgen-decode-half": ([], ACTGEN + ["guidance.adversarial_decode_size=4"]),
    "actgen-balanced-margin-repel": ([], ACTGEN + ["allocation.policy=balanced", "guidance.margin_scale=latent_dim",
                                                   "guidance.repel_within_batch=true"]),
}
CONDITIONS: dict[str, Overrides] = {
    name: (train if name in ("real-all", "actgen-train-search") else HOLDOUT + train, build)
    for name, (train, build) in _CONDITIONS.items()}

# Conditions whose builder overrides decide the images per round themselves, and those a budget
# multiple changes although they render nothing.
BUDGET_FREE = {name for name, (_, build) in CONDITIONS.items() if build is None} - {"real-steps"}


def renders(base: str, build_extra: Optional[list[str]] = None) -> bool:
    """Whether condition ``base`` (plus a plan's build overrides) loads a generator: it builds, and
    its last ``mode`` is not ``copy`` (a copy writes its guide images and loads none)."""
    build = CONDITIONS[base][1]
    if build is None:
        return False
    modes = [o.split("=", 1)[1].strip() for o in [*build, *(build_extra or [])] if o.startswith("mode=")]
    return not modes or modes[-1] != "copy"


def overrides_for(base: str, train_extra: list[str], build_extra: Optional[list[str]], budget: int,
                  small_round_ratio: float = 1 / 3) -> Overrides:
    """The trainer and builder overrides of condition ``base`` (a registry name) plus a plan's
    extra ones, with ``{budget}`` filled in."""
    if base not in CONDITIONS:
        raise ValueError(f"condition {base!r}: not in the registry {sorted(CONDITIONS)}")
    train, build = CONDITIONS[base]
    fmt = {"budget": budget, "budget_small": max(1, int(round(budget * small_round_ratio)))}
    train = [t.format(**fmt) for t in train] + list(train_extra)
    if build is None:
        if build_extra:
            raise ValueError(f"condition {base!r} builds nothing; it takes no build overrides ({build_extra})")
        return train, None
    return train, [b.format(**fmt) for b in build] + list(build_extra or [])
