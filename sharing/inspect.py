"""What a shard data set holds: counts per class, mode, round and generator, image size, the build
settings and whether it verifies. Pure reading; the CLI formats it (``actgen-data info``)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from actgen.shards.composition import composition
from actgen.shards.errors import FormatError, one_line, printable
from actgen.shards.reader import ShardRandomAccess
from actgen.shards.verify import verify

BUILD_FILE = "build.json"          # the builder's; read, never required
MAX_BUILD_FILE_BYTES = 1 << 20


def describe(directory: str | Path, check: bool = True, decode: bool = False) -> dict[str, Any]:
    """A summary of the data set in ``directory`` (a JSON-able dict).

    Raises:
        FormatError: not a data set (no or a bad ``index.json``), or a shard listed there is
            missing or unreadable (naming the file).
    """
    directory = Path(directory)
    data = ShardRandomAccess(directory)
    index = data.index
    by_class: Counter[str] = Counter()
    by_mode: Counter[str] = Counter()
    by_round: Counter[str] = Counter()
    generators: dict[str, dict] = {}
    provenances = []
    for i in range(len(data)):
        p = data.provenance(i)
        provenances.append(p)
        by_class[data.class_names[data.label(i)]] += 1
        by_mode[str((p.get("guidance") or {}).get("mode", "unknown"))] += 1
        by_round[str(p.get("round", "unknown"))] += 1
        gen = p.get("generator") or {}
        sha = str(gen.get("weights_sha256", "unknown"))
        entry = generators.setdefault(sha, {"weights_sha256": sha, "name": generator_name(gen), "images": 0})
        entry["images"] += 1
    build, build_problem = read_build_settings(directory)
    summary = {
        "location": str(directory), "name": index.name, "num_samples": index.num_samples,
        "num_shards": len(index.shards), "image_size": list(index.image_size),
        "class_names": list(index.class_names),
        "per_class": {name: by_class.get(name, 0) for name in index.class_names},
        "per_mode": dict(sorted(by_mode.items())), "per_round": dict(sorted(by_round.items())),
        "generators": sorted(generators.values(), key=lambda g: -g["images"]),
        "created": index.created, "build": build, "build_problem": build_problem,
        "composition": composition(provenances, data.labels(), data.class_names),
    }
    if check:
        try:
            report = verify(directory, decode=decode)
            summary["verify"] = {"ok": True, "decoded": decode, "extra_members": report.extra_members}
        except FormatError as e:
            summary["verify"] = {"ok": False, "error": one_line(e)}
    return summary


def generator_name(record: dict) -> str:
    """A generator's portable name: the last part of its id (a hub id's ``org/name``, a folder's
    name), never a whole local path."""
    ident = str(record.get("name") or record.get("id") or "unknown")
    if ident.startswith("/") or ident.startswith("~") or "\\" in ident:
        return Path(ident).name or ident
    return ident


def read_build_settings(directory: Path) -> tuple[dict | None, str | None]:
    """``(build.json's settings, None)`` when the data set has a well-formed one (bounded read);
    ``(None, why)`` when it is malformed: the file is optional, so it is reported and skipped,
    never a reason to refuse the data set; ``(None, None)`` without one."""
    path = directory / BUILD_FILE
    if path.is_symlink() or not path.is_file():
        return None, ("a symbolic link, not read" if path.is_symlink() else None)
    with open(path, "rb") as f:
        raw = f.read(MAX_BUILD_FILE_BYTES + 1)
    if len(raw) > MAX_BUILD_FILE_BYTES:
        return None, f"over {MAX_BUILD_FILE_BYTES} bytes, not read"
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"not valid JSON ({e})"
    settings = data.get("settings") if isinstance(data, dict) else None
    if not isinstance(settings, dict):
        return None, "no 'settings' object"
    return settings, None


def format_summary(s: dict) -> str:
    """The summary as terminal text; every value from the data set escaped (``printable``)."""
    t = printable
    lines = [f"{t(s['location'])}: {s['num_samples']} images in {s['num_shards']} shards, "
             f"{s['image_size'][0]}x{s['image_size'][1]}, {len(s['class_names'])} classes"]
    if "verify" in s:
        v = s["verify"]
        lines.append("verify: ok" + (" (images decoded)" if v.get("decoded") else " (checksums, counts, labels)")
                     if v["ok"] else f"verify: FAILED: {t(v['error'])}")
        if v.get("extra_members"):
            lines.append("other members (skipped by every reader): "
                         + ", ".join(f".{t(ext)} in {n} samples" for ext, n in v["extra_members"].items()))
    width = max((len(t(n)) for n in s["per_class"]), default=5)
    lines.append("per class:")
    lines += [f"  {t(name):<{width}}  {n:>6}" for name, n in s["per_class"].items()]
    lines.append("per mode:  " + ", ".join(f"{t(k)} {v}" for k, v in s["per_mode"].items()))
    lines.append("per round: " + ", ".join(f"{t(k)} {v}" for k, v in s["per_round"].items()))
    c = s["composition"]
    lines.append(f"guides:    {c['distinct_guides']} distinct, renders per guide max {c['renders_per_guide_max']}, "
                 f"mean {c['renders_per_guide_mean']:g}; roles " + ", ".join(f"{t(k)} {v}" for k, v in c["roles"].items()))
    lines.append("generators:")
    lines += [f"  {t(g['name'])} (weights sha256 {t(g['weights_sha256'][:12])}): {g['images']} images"
              for g in s["generators"]]
    if s.get("build"):
        b = s["build"]
        keys = ("mode", "budget", "seed", "round", "targets", "bank_scope")
        lines.append("build: " + ", ".join(f"{k} {t(b[k])}" for k in keys if k in b))
    if s.get("build_problem"):
        lines.append(f"build.json: skipped ({t(s['build_problem'])})")
    return "\n".join(lines)
