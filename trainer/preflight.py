"""What a run checks before its run folder exists, beyond the config's own checks: the optional
packages its loggers and locations need, and (inline builds) the builder's config and generator,
so that a mistake is one line at once instead of a failure after the first epoch."""
from __future__ import annotations

from .config import Config


def check(cfg: Config) -> None:
    """The optional packages the config's loggers and locations need, before anything is written."""
    from actgen.shards.runtime import require, require_for_location

    if cfg.train.tensorboard:
        require("tensorboard", "train.tensorboard")
    for name in cfg.train.loggers:
        require(name, "train.loggers", cfg.train.loggers)
    require_for_location(cfg.data.source.path, "data.source.path")
    if cfg.data.test_source is not None:
        require_for_location(cfg.data.test_source.path, "data.test_source.path")
    if cfg.synthetic.source != "none":
        require_for_location(cfg.synthetic.pattern, "synthetic.pattern")
    for i, location in enumerate(cfg.synthetic.static):
        require_for_location(location, f"synthetic.static[{i}]")
    if cfg.synthetic.source == "inline":
        from .inline import check_builder

        check_builder(cfg.synthetic)      # a bad generator.path fails now, not after epoch 0
