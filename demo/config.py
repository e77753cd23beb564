"""``actgen-demo``'s configuration (``configs/demo.yaml``): which configs the loop runs and where.

No torch here: the CLI's ``--help`` and config validation read this module only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from actgen.shards.config import load_structured


@dataclass(frozen=True)
class DemoConfig:
    """What ``actgen-demo`` runs (``configs/demo.yaml``).

    Attributes:
        output: directory of the two runs (``active/``, ``baseline/``) and the report.
        train_config: the trainer config of both runs.
        train_overrides: ``key=value`` overrides for it.
        build_config: the builder config of every round (``synthetic.build_config``).
        build_overrides: ``key=value`` overrides for it (``generator.path`` is set from ``generator``).
        generator: the fitted generator's directory: reused when it was fitted on the training data.
        fit_config: ``actgen-fit-generator`` config that makes it otherwise.
        baseline: also train on real images only, for the comparison.
    """

    output: str = "runs/demo"
    train_config: str = "configs/train-digits.yaml"
    train_overrides: list[str] = field(default_factory=list)
    build_config: str = "configs/build-digits.yaml"
    build_overrides: list[str] = field(default_factory=list)
    generator: str = "runs/generators/digits"
    fit_config: str = "configs/fit-digits.yaml"
    baseline: bool = True


def load_demo_config(path: Optional[str | Path], overrides: Sequence[str] = (),
                     literal: Optional[Mapping[str, str]] = None) -> DemoConfig:
    """Load a YAML config over the defaults, then apply ``key=value`` overrides.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown key or a mistyped value (names the key).
    """
    return load_structured(DemoConfig, path, overrides, literal=literal)
