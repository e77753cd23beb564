"""What the prompt calls each class, and what the guide image of a hard sample shows.

Class names are the data set's (ImageNet's are WordNet ids, ``n01440764``): labels, keys, the
manifest and the checkpoint use them. A prompt needs a word the text encoder knows (``tench``),
so ``generator.prompt_names`` may map each class to its prompt name. Prompt names may repeat
(the paper's simple-name list has duplicates); class names stay unique.

The guide of a hard sample is what the classifier saw of it: :func:`classifier_crop` cuts the
same centre crop out of the stored image as the bundle's evaluation transform (resize the
shorter side to ``input / crop_pct``, centre crop ``input``), without the intermediate resize,
so the generator gets the classifier's field of view at the image's own detail.
"""
from __future__ import annotations

import collections
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from actgen.shards.errors import FormatError


def load_prompt_names(path: str | Path, class_names: Sequence[str]) -> list[str]:
    """Prompt names in label order from ``path``.

    ``path`` is a JSON object ``{class name: prompt name}`` covering every class (further keys
    are ignored, so one ImageNet file serves its subsets), a JSON list in label order, or a text
    file with one prompt name a line in label order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FormatError: naming the file and the class or line that is missing or not a name.
    """
    path = Path(path).expanduser()
    where = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt-name file not found (config key 'generator.prompt_names')")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(where, f"not valid JSON ({e})") from None
    else:
        data = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        missing = [c for c in class_names if c not in data]
        if missing:
            raise FormatError(where, f"no prompt name for {len(missing)} classes, e.g. {missing[:3]} "
                                     "(a mapping must name every class of the data set)")
        names = [data[c] for c in class_names]
        labels = [f"'{c}'" for c in class_names]
    elif isinstance(data, list):
        if len(data) != len(class_names):
            raise FormatError(where, f"lists {len(data)} prompt names for {len(class_names)} classes "
                                     "(a list is in label order, one name per class)")
        names, labels = list(data), [f"entry {i}" for i in range(len(data))]
    else:
        raise FormatError(where, f"expected a JSON object (class name -> prompt name) or list, got "
                                 f"{type(data).__name__}")
    for name, label in zip(names, labels):
        if not isinstance(name, str) or not name.strip() or "{" in name or "}" in name:
            raise FormatError(where, f"prompt name of {label} is {name!r}: expected a non-empty string "
                                     "without braces")
    return [n.strip() for n in names]


def classifier_crop(image: np.ndarray, input_size: tuple[int, int], crop_pct: float) -> np.ndarray:
    """The centre crop of ``image`` (HWC) that timm's evaluation transform shows the classifier.

    The transform resizes the shorter side to ``floor(input / crop_pct)`` and centre-crops
    ``input``; on the stored image that is a centre box of the shorter side times
    ``input / floor(input / crop_pct)`` (the whole shorter side at ``crop_pct`` 1), with
    torchvision's rounding of the offsets. A square image at ``crop_pct`` 1 comes back unchanged.
    """
    h, w = image.shape[:2]
    size = min(int(v) for v in input_size)        # the trainer's inputs are square
    scale = math.floor(size / crop_pct)           # timm: the shorter side's size before the crop
    side_h = side_w = max(1, min(h, w, round(min(h, w) * size / scale)))
    top, left = int(round((h - side_h) / 2)), int(round((w - side_w) / 2))
    return image[top:top + side_h, left:left + side_w]


# -- ImageNet's simple names ------------------------------------------------------------------

_IMAGENET_SAME_WORD = {"n02012849": "crane bird", "n03126707": "construction crane"}
"""Classes whose WordNet lemmas are all shared with another class: a word that tells them apart."""


def imagenet_simple_names() -> dict[str, str]:
    """A unique short prompt name per ImageNet-1k WordNet id, from timm's synset lemmas.

    Each class takes its first lemma ("tench, Tinca tinca" -> "tench"). Where classes share it,
    those with a further lemma take the first one nobody else uses ("maillot, tank suit" -> "tank
    suit"), and classes left with nothing of their own take the word of ``_IMAGENET_SAME_WORD``.
    ``configs/imagenet-simple-names.json`` is this mapping (a test keeps them equal).
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    wnids = list(info.label_names())
    lemmas = {w: [s.strip() for s in info.index_to_description(i).split(",") if s.strip()]
              for i, w in enumerate(wnids)}
    first = collections.Counter(lemmas[w][0] for w in wnids)
    every = collections.Counter(s for w in wnids for s in lemmas[w])
    names: dict[str, str] = {}
    for w in wnids:
        name: Optional[str] = lemmas[w][0]
        if first[name] > 1:
            name = next((s for s in lemmas[w][1:] if every[s] == 1), None)
            if name is None:
                others = [v for v in wnids if v != w and lemmas[v][0] == lemmas[w][0]]
                # The last class of a group keeps the lemma once every other member has moved on.
                moved = all(any(every[s] == 1 for s in lemmas[v][1:]) or v in _IMAGENET_SAME_WORD for v in others)
                name = _IMAGENET_SAME_WORD.get(w, lemmas[w][0] if moved else None)
            if name is None:
                raise ValueError(f"ImageNet class {w} ({lemmas[w]}) has no name of its own: add it to _IMAGENET_SAME_WORD")
        names[w] = name
    duplicates = [n for n, k in collections.Counter(names.values()).items() if k > 1]
    if duplicates:
        raise ValueError(f"ImageNet simple names are not unique: {duplicates}")
    return names
