"""A comparison's plan: one YAML file, typed and checked, frozen by the hash of its body.

The body fixes everything that decides a run's outcome: the data and how it is split, the
generator, the train and build configs (their text is hashed too), the conditions, budgets,
seeds and splits, and the analysis. ``notes`` (dated amendments) are kept apart from the body:
adding one never changes the hash, so records already written stay valid, and the report lists
every note with its date. Any other change to a plan whose records exist is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from actgen.shards.config import check_value as _check, load_structured, to_dict

from .conditions import BUDGET_FREE, CONDITIONS, renders

PLAN_FILE = "plan.json"
"""The frozen plan inside a comparison's output folder: body, hash, the configs' text, notes."""

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class DataPlan:
    """Where the images come from and how each split divides them.

    Attributes:
        source: any data set the trainer reads (``builtin:digits``, a parquet file, an image
            folder, a ``save_to_disk`` folder, a hub name).
        split: the source's split.
        pool_fraction: share of each class for the generator pool (0: no pool; the generator
            is then given by ``generator.path``).
        labeled_per_class: the classifier's images per class (its hold-out inside).
        labeled, test: fixed splits instead (parquet or any source), the same for every split
            seed; ``splits`` then only numbers repetitions.
    """

    source: str = "builtin:digits"
    split: str = "train"
    pool_fraction: float = 0.5
    labeled_per_class: int = 20
    labeled: Optional[str] = None
    test: Optional[str] = None

    def __post_init__(self) -> None:
        _check(0.0 <= self.pool_fraction < 1.0, "data.pool_fraction", self.pool_fraction, "a share in [0, 1)")
        _check(self.labeled_per_class >= 2, "data.labeled_per_class", self.labeled_per_class, "an int >= 2")
        _check((self.labeled is None) == (self.test is None), "data.test", self.test,
               "set together with data.labeled (fixed splits) or both null")

    @property
    def fixed(self) -> bool:
        return self.labeled is not None


@dataclass(frozen=True)
class GeneratorPlan:
    """The generator every build of a split renders with.

    Attributes:
        path: one generator folder (or hub id) for every split; null: fit one per split.
        fit_config: ``actgen-fit-generator`` config fitted on each split's pool when ``path`` is null.
        fit_set: overrides for that fit.
        sha256: per split seed (as a string key), the generator's weights sha256 the runs must
            use: pinned in the plan before any record, so a refit that gives other weights is
            refused instead of silently mixed in.
    """

    path: Optional[str] = None
    fit_config: Optional[str] = None
    fit_set: list[str] = field(default_factory=list)
    sha256: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.path is None or self.fit_config is None, "generator.fit_config", self.fit_config,
               "null when generator.path is set (one generator, or one fitted per split)")


@dataclass(frozen=True)
class ConditionPlan:
    """One condition of the comparison.

    Attributes:
        name: its name in records and the report.
        base: the registry condition it starts from (default: ``name``).
        budgets: multiples of ``budget`` it runs at (conditions that build nothing run once).
        train_set, build_set: overrides on top of the registry's (a named variant).
    """

    name: str = ""
    base: Optional[str] = None
    budgets: list[float] = field(default_factory=lambda: [1.0])
    train_set: list[str] = field(default_factory=list)
    build_set: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(bool(_NAME.match(self.name)), "conditions[].name", self.name, "a name of letters, digits, . _ -")
        _check(self.registry in CONDITIONS, f"conditions[{self.name}].base", self.registry,
               f"one of {sorted(CONDITIONS)}")
        _check(bool(self.budgets) and all(b > 0 for b in self.budgets), f"conditions[{self.name}].budgets",
               self.budgets, "a non-empty list of multiples > 0")

    @property
    def registry(self) -> str:
        return self.base or self.name

    @property
    def multiples(self) -> list[float]:
        return [1.0] if self.registry in BUDGET_FREE else [float(b) for b in self.budgets]


@dataclass(frozen=True)
class GroupPlan:
    """Contrasts tested together (Holm over the group). A contrast is ``"A - B"``, each side a
    condition name, optionally ``@multiple`` (default 1)."""

    name: str = ""
    contrasts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MatchPlan:
    """Images ``curve`` (a condition run at several budgets) needs to match ``condition``."""

    condition: str = "actgen"
    curve: str = "random"
    anchor: Optional[str] = "real"


@dataclass(frozen=True)
class AnalysisPlan:
    """The analysis, fixed before any record.

    Attributes:
        alpha: two-sided level of every test (and of TOST).
        margin: the equivalence margin, in accuracy points: a difference within ±margin counts as
            none for a user.
        primary: groups of primary contrasts, Holm within each group.
        secondary: further contrasts, Holm over all of them.
        match: images-to-match estimates (no test).
        power_effect: the effect (points) whose power the report computes from the records.
    """

    alpha: float = 0.05
    margin: float = 0.5
    primary: list[GroupPlan] = field(default_factory=list)
    secondary: list[str] = field(default_factory=list)
    match: list[MatchPlan] = field(default_factory=list)
    power_effect: float = 0.5

    def __post_init__(self) -> None:
        _check(0.0 < self.alpha < 0.5, "analysis.alpha", self.alpha, "a level in (0, 0.5)")
        _check(self.margin > 0, "analysis.margin", self.margin, "points > 0")


@dataclass(frozen=True)
class Note:
    """A dated amendment (``YYYY-MM-DD``), kept apart from the body: never an edit of it.

    Attributes:
        date, text: when and what (the report lists every note).
        seeds: training seeds this amendment adds to every split (a power check's outcome); the
            only change a note makes to what runs. Splits are never added by a note: choosing
            splits after seeing results would bias the comparison.
    """

    date: str = ""
    text: str = ""
    seeds: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(bool(_DATE.match(self.date)), "notes[].date", self.date, "a date YYYY-MM-DD")
        _check(bool(self.text.strip()), "notes[].text", self.text, "the amendment's text")
        _check(len(set(self.seeds)) == len(self.seeds) and all(s >= 0 for s in self.seeds), "notes[].seeds",
               self.seeds, "distinct ints >= 0")


@dataclass(frozen=True)
class ComparePlan:
    """Everything ``actgen-compare`` runs and how it analyses the records.

    Attributes:
        name: the comparison's name (titles).
        data, generator: see :class:`DataPlan`, :class:`GeneratorPlan`.
        train_config, build_config: the ``actgen-train`` and ``actgen-build`` configs (paths or
            shipped names); the plan sets data paths, seeds and the condition's overrides.
        train_set, build_set: overrides for every run.
        budget: synthetic images per round at multiple 1.
        conditions: what runs.
        seeds: training seeds, paired across conditions (seed s trains with ``train.seed = 42 + s``
            and builds with ``seed = s``).
        splits: split seeds, each a different three-way split (and generator when fitted).
        threads: torch threads per run.
        analysis: see :class:`AnalysisPlan`.
        notes: dated amendments (not part of the body).
    """

    name: str = "comparison"
    data: DataPlan = field(default_factory=DataPlan)
    generator: GeneratorPlan = field(default_factory=GeneratorPlan)
    train_config: str = ""
    build_config: str = ""
    train_set: list[str] = field(default_factory=list)
    build_set: list[str] = field(default_factory=list)
    budget: int = 16
    conditions: list[ConditionPlan] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    splits: list[int] = field(default_factory=lambda: [0])
    threads: int = 1
    analysis: AnalysisPlan = field(default_factory=AnalysisPlan)
    notes: list[Note] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(bool(self.train_config), "train_config", self.train_config, "an actgen-train config")
        _check(self.budget >= 1, "budget", self.budget, "an int >= 1")
        _check(self.threads >= 1, "threads", self.threads, "an int >= 1")
        names = [c.name for c in self.conditions]
        _check(bool(names) and len(set(names)) == len(names), "conditions", names, "a non-empty list, names unique")
        _check(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds) and min(self.seeds) >= 0, "seeds",
               self.seeds, "distinct ints >= 0")
        _check(bool(self.splits) and len(set(self.splits)) == len(self.splits), "splits", self.splits,
               "distinct split seeds")
        builds = any(CONDITIONS[c.registry][1] is not None for c in self.conditions)
        _check(bool(self.build_config) or not builds, "build_config", self.build_config,
               "an actgen-build config (some condition builds)")
        rendering = self.renders
        _check(self.generator.path is not None or self.generator.fit_config is not None or not rendering,
               "generator.path", self.generator.path, "a generator (or generator.fit_config to fit one per split)")
        _check(self.data.pool_fraction > 0 or self.generator.path is not None or not rendering, "data.pool_fraction",
               self.data.pool_fraction, "> 0 when generator.fit_config fits a generator on each split's pool")
        for group in self.analysis.primary:
            for c in group.contrasts:
                self.contrast(c)
        for c in self.analysis.secondary:
            self.contrast(c)
        added = [s for n in self.notes for s in n.seeds]
        _check(len(set(added)) == len(added) and not set(added) & set(self.seeds), "notes[].seeds", added,
               f"seeds not already in the plan ({self.seeds}) nor added twice")
        for m in self.analysis.match:
            for name in (m.condition, m.curve) + ((m.anchor,) if m.anchor else ()):
                _check(name in names, "analysis.match", name, f"one of the conditions {names}")

    @property
    def renders(self) -> bool:
        """Whether some condition loads the generator (builds that only copy guides load none)."""
        return any(renders(c.registry, c.build_set) for c in self.conditions)

    def condition(self, name: str) -> ConditionPlan:
        return next(c for c in self.conditions if c.name == name)

    def contrast(self, text: str) -> tuple[tuple[str, float], tuple[str, float]]:
        """``"A@m - B"`` -> ``((A, m), (B, 1.0))``; ValueError naming the contrast otherwise."""
        parts = [p.strip() for p in text.split(" - ")]
        _check(len(parts) == 2, "analysis contrast", text, "'A - B' (spaces around the minus)")
        sides = []
        for p in parts:
            name, _, mult = p.partition("@")
            _check(any(c.name == name for c in self.conditions), "analysis contrast", text,
                   f"conditions of the plan ({[c.name for c in self.conditions]}); {name!r} is not one")
            try:
                m = float(mult) if mult else 1.0
            except ValueError:
                raise ValueError(f"analysis contrast {text!r}: {mult!r} is not a budget multiple") from None
            _check(m in self.condition(name).multiples, "analysis contrast", text,
                   f"a budget multiple {name!r} runs at ({self.condition(name).multiples})")
            sides.append((name, m))
        return sides[0], sides[1]

    @property
    def all_seeds(self) -> list[int]:
        """The body's seeds, then those the notes added, in order."""
        return list(self.seeds) + [s for n in self.notes for s in n.seeds]

    def runs(self) -> list[tuple[int, int, str, float]]:
        """Every ``(split, seed, condition, multiple)``, split-major then seed-major, so a partial
        comparison compares every condition on the same seeds of the first splits."""
        return [(split, seed, c.name, m) for split in self.splits for seed in self.all_seeds
                for c in self.conditions for m in c.multiples]


def load_plan(path: str | Path, overrides: Sequence[str] = ()) -> ComparePlan:
    """The plan in ``path`` (unknown keys and bad values are errors naming the key)."""
    return load_structured(ComparePlan, path, overrides)


def body(plan: ComparePlan) -> dict:
    """The plan without its notes: what the hash covers (with the configs' text)."""
    data = to_dict(plan)
    data.pop("notes", None)
    return data


def config_texts(plan: ComparePlan) -> dict[str, Optional[str]]:
    """The text of every config the runs read: the train, build and fit configs."""
    from actgen.shards.config import resolve_config_path

    out: dict[str, Optional[str]] = {}
    for key, value in (("train_config", plan.train_config), ("build_config", plan.build_config or None),
                       ("generator.fit_config", plan.generator.fit_config)):
        if value is None:
            out[key] = None
            continue
        path = resolve_config_path(value)
        if not path.is_file():
            raise FileNotFoundError(f"{value}: {key} not found")
        out[key] = path.read_text()
    return out


def _same_settings(frozen: Optional[str], current: Optional[str]) -> bool:
    """Whether two config texts set the same keys to the same values (comments and layout aside)."""
    import yaml

    if frozen is None or current is None:
        return frozen is current
    try:
        return yaml.safe_load(frozen) == yaml.safe_load(current)
    except yaml.YAMLError:
        return frozen == current


def plan_sha256(plan: ComparePlan) -> str:
    """sha256 of the body and the configs' text (canonical JSON): the id every record carries."""
    blob = json.dumps({"body": body(plan), "configs": config_texts(plan)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def freeze(plan: ComparePlan, out: Path, has_records: bool) -> str:
    """Write ``<out>/plan.json`` (body, hash, configs, notes); return the hash.

    A plan whose body differs from the frozen one is refused once records exist (naming the
    keys that differ); notes may always be added.
    """
    from actgen.shards.atomic import atomic_write_text
    from actgen.shards.config import diff_keys

    sha = plan_sha256(plan)
    path = Path(out) / PLAN_FILE
    configs = config_texts(plan)
    if path.is_file():
        frozen = json.loads(path.read_text())
        if frozen.get("sha256") != sha and has_records:
            changed = diff_keys(frozen.get("body", {}), body(plan))
            frozen_configs = frozen.get("configs") if isinstance(frozen.get("configs"), dict) else {}
            changed += [k for k, v in configs.items() if not _same_settings(frozen_configs.get(k), v)]
            if not changed and isinstance(frozen.get("sha256"), str):
                # Only comments or layout of a config changed: the runs it gives are the same,
                # so the plan keeps its hash and the frozen text.
                sha, configs = frozen["sha256"], frozen_configs
        if frozen.get("sha256") != sha and has_records:
            raise ValueError(f"{path}: records exist for plan {str(frozen.get('sha256'))[:12]}, and this plan's body "
                             f"differs ({', '.join(changed) or 'its configs'}); a frozen plan is amended with a "
                             "dated note under 'notes', never edited; start a new comparison in another --out")
        old_notes = frozen.get("notes", [])
        new_notes = [dataclasses.asdict(n) for n in plan.notes]
        if has_records and new_notes[:len(old_notes)] != old_notes:
            raise ValueError(f"{path}: notes already frozen were edited or removed; notes are only appended")
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"sha256": sha, "body": body(plan), "configs": configs,
                                        "notes": [dataclasses.asdict(n) for n in plan.notes]}, indent=1) + "\n")
    return sha
