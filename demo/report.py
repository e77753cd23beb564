"""The loop's report: accuracy per epoch with and without synthetic data, and what was rendered.

Reads only files: the two run directories (``metrics.jsonl``, ``summary.json``, ``rounds/``) and
the data set the rounds point into; writes ``report.md``, ``accuracy.png`` (matplotlib, Agg) and
``hard_vs_rendered.png`` (each hard sample of a round beside the images rendered near it).
"""
from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from actgen.builder.contact_sheet import CONTACT_SHEET_FILE
from actgen.shards.errors import FormatError
from actgen.shards.manifest import read_manifest
from actgen.shards.reader import ShardRandomAccess
from actgen.shards.rounds import MANIFEST_FILE, SHARDS_DIR, list_rounds, read_status, round_dir
from actgen.shards.sources import LabeledImages

_logger = logging.getLogger(__name__)

REPORT_FILE = "report.md"
PLOT_FILE = "accuracy.png"
PAIRS_FILE = "hard_vs_rendered.png"


@dataclass(frozen=True)
class RunRecord:
    """One finished training run, as read back from its directory."""

    run_dir: Path
    rows: list[dict]
    summary: dict

    @classmethod
    def read(cls, run_dir: str | Path) -> "RunRecord":
        run_dir = Path(run_dir)
        metrics = run_dir / "metrics.jsonl"
        if not metrics.is_file():
            raise FileNotFoundError(f"{metrics}: not found; is {run_dir} a finished actgen-train run?")
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
        return cls(run_dir=run_dir, rows=rows, summary=summary)

    def curve(self, key: str = "test_acc") -> list[Optional[float]]:
        return [_finite(r.get(key)) for r in self.rows]

    @property
    def final(self) -> Optional[float]:
        return _finite(self.rows[-1].get("test_acc")) if self.rows else None


def _finite(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and value == value else None


def plot_accuracy(active: RunRecord, baseline: Optional[RunRecord], path: Path) -> Path:
    """Test accuracy per epoch, with (active) and without (baseline) synthetic data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for record, label, style in ((active, "with ActGen synthetic data", "-o"),
                                 (baseline, "real images only", "--s")):
        if record is None:
            continue
        ys = [100 * v if v is not None else float("nan") for v in record.curve()]
        ax.plot(range(len(ys)), ys, style, label=label, ms=4)
    for r in active.summary.get("pool", []):
        ax.axvline(r["epoch"] - 0.5, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("epoch (grey lines: a round's synthetic images join training)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def hard_vs_rendered(run_dir: Path, images: LabeledImages, path: Path, per_round: int = 4,
                     renders: int = 4, cell: int = 64) -> Optional[Path]:
    """A grid: per round, ``per_round`` hard samples (first column) beside up to ``renders`` images
    rendered near them. None when no round has shards."""
    from PIL import Image, ImageDraw

    rows: list[tuple[str, object, list]] = []
    for r in list_rounds(run_dir):
        shards = round_dir(run_dir, r) / SHARDS_DIR
        try:
            data = ShardRandomAccess(shards)
        except (FormatError, FileNotFoundError):
            continue
        near = defaultdict(list)
        for i in range(len(data)):
            sample = data.sample(i)
            near[sample.provenance.get("source_id")].append(sample)
        manifest = read_manifest(round_dir(run_dir, r) / MANIFEST_FILE)
        # The hard samples with the most renderings first (a budget below the number of hard
        # samples renders most of them once).
        chosen = sorted((h for h in manifest.samples if h.id in near), key=lambda h: -len(near[h.id]))[:per_round]
        for hard in chosen:
            real = images.image(images.index_of(hard.id))
            label = f"round {r}: {hard.class_name}, predicted {manifest.header.class_names[hard.predicted]}"
            rows.append((label, real, near[hard.id][:renders]))
    if not rows:
        return None
    label_w, gap, header = 230, 6, 18
    step = cell + gap
    sheet = Image.new("RGB", (label_w + step * (1 + renders) + gap, header + step * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((label_w, 2), "hard sample", fill="black")
    draw.text((label_w + step + gap, 2), "rendered near it", fill="black")
    for y, (label, real, rendered) in enumerate(rows):
        top = header + y * step
        draw.text((4, top + cell // 2 - 6), label, fill="black")
        sheet.paste(real.convert("RGB").resize((cell, cell), Image.NEAREST), (label_w, top))
        for x, sample in enumerate(rendered):
            sheet.paste(sample.image.convert("RGB").resize((cell, cell), Image.NEAREST),
                        (label_w + gap + step * (x + 1), top))
    sheet.save(path)
    return path


def write_report(output: str | Path, active_dir: str | Path, baseline_dir: Optional[str | Path],
                 images: LabeledImages, command: str = "", timings: Optional[dict[str, float]] = None) -> Path:
    """Write ``report.md`` with its two figures into ``output``; return its path."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    active = RunRecord.read(active_dir)
    baseline = RunRecord.read(baseline_dir) if baseline_dir is not None else None
    plot = plot_accuracy(active, baseline, output / PLOT_FILE)
    pairs = hard_vs_rendered(active.run_dir, images, output / PAIRS_FILE)

    def pct(v: Optional[float]) -> str:
        return "—" if v is None else f"{100 * v:.2f}%"

    lines = ["# ActGen loop report", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"- Active run: `{active.run_dir}` (synthetic images from each round's hard samples)"]
    if baseline is not None:
        lines += [f"- Baseline: `{baseline.run_dir}` (same config, seed and split, real images only)"]
    final = f"- Final test accuracy: **{pct(active.final)}** with synthetic data"
    if baseline is not None:
        delta = "" if active.final is None or baseline.final is None else \
            f" ({100 * (active.final - baseline.final):+.2f} points)"
        final += f", {pct(baseline.final)} without{delta}"
    lines += [final, f"- Synthetic images in training: {active.summary.get('synthetic_pool', 0)}", ""]
    lines += [f"![test accuracy per epoch]({plot.name})", ""]

    lines += ["## Rounds", "", "| round | after epoch | hard samples | accuracy on the searched images | images built "
              "| build time "
              "| contact sheet |", "|---|---|---|---|---|---|---|"]
    for info in active.summary.get("rounds", []):
        directory = round_dir(active.run_dir, info["round"])
        status = read_status(directory)
        sheet = directory / SHARDS_DIR / CONTACT_SHEET_FILE
        link = f"[png]({_relative(sheet, output)})" if sheet.is_file() else "—"
        built = f"{status.images}" if status is not None else _count(directory / SHARDS_DIR)
        secs = f"{status.seconds:.0f} s" if status is not None and status.seconds else "—"
        searched = info.get("holdout_acc") if info.get("holdout_acc") is not None else info.get("search_train_acc")
        lines.append(f"| {info['round']} | {info['epoch']} | {info['hard_samples']} | {pct(searched)} "
                     f"| {built} | {secs} | {link} |")
    lines += [""]
    if pairs is not None:
        lines += ["## Hard samples and what was rendered near them", "",
                  "Each row: a hard sample (left; true class, then the model's prediction): a training image "
                  "the round's classifier found hard, or a misclassified hold-out image with the paper's hold-out "
                  "search; then images the builder rendered from it.", "", f"![hard samples and renderings]({pairs.name})", ""]

    lines += ["## Per epoch", "", "| epoch | test acc (with) | test acc (without) | synthetic pool | round ended |",
              "|---|---|---|---|---|"]
    base_curve = baseline.curve() if baseline is not None else []
    for i, row in enumerate(active.rows):
        without = pct(base_curve[i]) if i < len(base_curve) else "—"
        ended = "" if row.get("round") is None else f"{row['round']} ({row.get('hard_samples')} hard)"
        lines.append(f"| {row['epoch']} | {pct(_finite(row.get('test_acc')))} | {without} | {row['synthetic_pool']} "
                     f"| {ended} |")
    if timings:
        lines += ["", "## Time", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    path = output / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    _logger.info("report: %s (%s%s)", path, plot.name, f", {pairs.name}" if pairs else "")
    return path


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def _count(shards: Path) -> str:
    try:
        return str(len(ShardRandomAccess(shards)))
    except (FormatError, FileNotFoundError):
        return "—"
