"""The data-set card (``README.md`` with Hugging Face metadata) every shard set carries: licence
fields, the ``train`` split's shards, the features ``datasets`` loads them with, and a short text.

Everything in it comes from the index (a received file) or the shards' own tar headers, and is
escaped before it reaches YAML or Markdown.
"""
from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ._schema import is_int
from .errors import printable
from .samples import IMAGE_FORMATS, SAMPLE_MEMBERS

if TYPE_CHECKING:    # the writer imports this module
    from .writer import DatasetIndex


def _size_category(n: int) -> str:
    """The Hugging Face ``size_categories`` bucket of ``n`` samples."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
              (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")]
    return next((label for bound, label in bounds if n < bound), "n>10M")


LICENSE_ID = r"[a-z0-9][a-z0-9.+\-]*"   # what the Hub's dataset-card ``license`` field takes


LICENSE_FIELDS = ("dataset", "generator", "source_terms")    # what an index's created.license holds


def card_license(created: dict) -> dict[str, Optional[str]]:
    """``created.license`` as ``{"dataset", "generator", "source_terms", "dataset_name"}`` (strings or
    None; ``dataset_name``: for a licence that is not a Hub id, a slug of it or ``unspecified``).

    ``created`` comes from a received file: anything that is not a string is taken as unknown.
    """
    value = created.get("license")
    if isinstance(value, str):                 # a bare licence id
        value = {"dataset": value}
    value = value if isinstance(value, dict) else {}
    # One line each: the card's YAML and text hold them, and a received file may hold anything.
    out = {k: printable(" ".join(value[k].split())) or None if isinstance(value.get(k), str) else None
           for k in ("dataset", "generator", "source_terms")}
    out["dataset_name"] = None
    if not (out["dataset"] and re.fullmatch(LICENSE_ID, out["dataset"])):
        # Not a licence id the Hub knows: "other", with the Hub's license_name as a slug of it.
        slug = re.sub(r"[^a-z0-9]+", "-", (out["dataset"] or "").lower()).strip("-")[:64]
        out["dataset"], out["dataset_name"] = None, slug or "unspecified"
    return out


def card_features(class_names: list[str], image_format: str) -> list[dict]:
    """The card's ``dataset_info.features``: what ``datasets``' WebDataset loader gives each sample,
    with the label as a ``ClassLabel`` of the set's class names (so ``cls`` loads with its names)
    and the provenance as ``Json`` (its fields differ between guidance modes and merged sets)."""
    import datasets

    return datasets.Features({
        "__key__": datasets.Value("string"), "__url__": datasets.Value("string"),
        image_format: datasets.Image(), "cls": datasets.ClassLabel(names=list(class_names)),
        "json": datasets.Json()})._to_yaml_list()


def shard_image_format(directory: str | Path, index: DatasetIndex) -> str:
    """The image extension of the set's first sample (a set holds one format), read from the
    first shard's tar headers (bounded: the members of one sample). The card only describes the
    set, so ``png`` when it cannot tell (an empty or damaged set: ``verify`` is what reports that)."""
    first = next((s for s in index.shards if s.num_samples), None)
    if first is None:
        return "png"
    try:
        with tarfile.open(Path(directory) / first.filename, "r:") as tar:
            for _, member in zip(range(len(SAMPLE_MEMBERS) + 8), tar):
                extension = member.name.rpartition(".")[2]
                if extension in IMAGE_FORMATS:
                    return extension
    except (tarfile.TarError, OSError):
        pass
    return "png"


def dataset_card(index: DatasetIndex, image_format: str = "png") -> str:
    """README.md: a Hugging Face dataset card (``huggingface_hub.DatasetCard``), from the index and
    the shards' image format.

    Its YAML lists the shards as the ``train`` split's ``data_files``, so that
    ``datasets.load_dataset(<folder>)`` and the Hub's viewer read the tar shards (image, ``cls``
    label, ``json`` provenance) and not the folder's JSON files, and declares their features
    (:func:`card_features`). Values that come from the index are escaped as YAML by
    ``DatasetCardData`` and shown in code spans in the text.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    created = index.created
    licence = card_license(created)
    other = {} if licence["dataset"] else {"license_name": licence["dataset_name"]}   # the Hub asks for it
    data = DatasetCardData(
        license=licence["dataset"] or "other", **other, task_categories=["image-classification"],
        size_categories=[_size_category(index.num_samples)], pretty_name=index.name,
        tags=["synthetic", "webdataset", "actgen"],
        configs=[{"config_name": "default",
                  "data_files": [{"split": "train", "path": [s.filename for s in index.shards]}]}],
        dataset_info={"features": card_features(index.class_names, image_format)},
        generator_license=licence["generator"] or "unknown", source_data_terms=licence["source_terms"] or "unknown")

    def code(value) -> str:
        if is_int(value):
            return str(value)
        return "`" + json.dumps(value).replace("`", "\\u0060") + "`"

    lines = [
        f"# {index.name if re.fullmatch(r'[A-Za-z0-9_. -]+', index.name) else code(index.name)}",
        "",
        "Synthetic images rendered by `actgen-build` near the hard samples of an image classifier.",
        "WebDataset tar shards; each sample has an image (`png`/`jpg`/`webp`), a label (`cls`, an index",
        "into the class names below) and its provenance (`json`: generator, prompt, seed, guidance,",
        "source sample, checkpoint).",
        "",
        f"- Format: `{index.format}` version {index.format_version} (see `index.json`)",
        f"- Samples: {index.num_samples} in {len(index.shards)} shards; images {index.image_size[0]}x"
        f"{index.image_size[1]} (HxW)",
        f"- Classes ({len(index.class_names)}): {code(index.class_names)}",
        f"- Licence: {code(licence['dataset'] or 'other')}; "
        f"the generator's: {code(licence['generator'] or 'unknown')}; "
        f"the source data's terms: {code(licence['source_terms'] or 'unknown')}",
    ]
    for key in ("tool_version", "time", "round", "generator"):
        if key in created:
            lines.append(f"- {key.replace('_', ' ').capitalize()}: {code(created[key])}")
    if isinstance(created.get("filter"), dict):       # a filtered one says how
        f = created["filter"]
        lines.append(f"- Filter: kept {code(f.get('kept'))} of {code(f.get('of'))} images with p(label) >= "
                     f"{code(f.get('min_prob'))} and rank <= {code(f.get('max_rank'))}, scorer {code(f.get('scorer'))}")
    sources = created.get("sources")
    for source in sources if isinstance(sources, list) else []:   # a merged or filtered set lists its parts
        if isinstance(source, dict):
            lines.append(f"- Source: {code(source.get('path'))} ({code(source.get('num_samples'))} samples, round "
                         f"{code(source.get('round'))}, index sha256 {code(str(source.get('index_sha256'))[:12])})")
    lines += [
        "",
        "Read with Hugging Face datasets: `datasets.load_dataset(<this directory>, split='train')`;",
        "with timm: `timm.data.create_dataset('wds/<name>', root=<this directory>, split='train')`.",
        "",
    ]
    return str(DatasetCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(lines)))
