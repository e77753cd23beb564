"""actgen.trainer: ``actgen-train``, a timm training loop that works in active-generation rounds.

Stages, one module each: ``config`` (typed YAML config) -> ``data`` (splits, transforms, the
mixing sampler, loaders) -> ``model`` (timm model, initial weights) -> ``task`` (mixup + loss)
-> ``loop`` (the epoch loop) -> ``evaluate`` (accuracy, hard samples) -> ``rounds`` (manifest +
bundle for the builder) and ``synthetic`` (the pool of consumed shards); ``schedule`` is the pure
round arithmetic, ``checkpoint`` the exact-resume state, ``run`` wires them, ``cli`` is the
command. The trainer meets the builder only through ``actgen.shards``.
"""
