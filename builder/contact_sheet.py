"""``contact_sheet.png``: each planned guide image beside what was rendered from it.

Drawn after the shards are written, from the shards themselves, so the driver never holds more
images than the sheet shows.
"""
from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from actgen.shards.atomic import atomic_write_bytes
from actgen.shards.reader import read_member, scan_tar
from actgen.shards.samples import decode_image
from actgen.shards.writer import CONTACT_SHEET_FILE

from .inputs import BuildInputs
from .plan import BuildPlan

_logger = logging.getLogger(__name__)



def contact_sheet(pairs: Sequence[tuple[object, object, str]], columns: int = 4, cell: int | None = None):
    """Guide images beside what was rendered from them.

    Args:
        pairs: ``(guide PIL image, rendered PIL image, caption)``.
        columns: pairs per row.
        cell: side of each image cell; default the rendered size clamped to 96..256 pixels.

    Returns:
        An RGB PIL image: per pair, guide on the left, render on the right, caption below.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not pairs:
        raise ValueError("contact_sheet: no pairs")
    if cell is None:
        cell = min(max(pairs[0][1].width, 96), 256)
    caption_h, pad = 14, 4
    columns = min(columns, len(pairs))
    rows = math.ceil(len(pairs) / columns)
    pair_w, pair_h = 2 * cell + pad, cell + caption_h
    sheet = Image.new("RGB", (columns * (pair_w + 2 * pad), rows * (pair_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, (guide, rendered, caption) in enumerate(pairs):
        x0 = (k % columns) * (pair_w + 2 * pad) + pad
        y0 = (k // columns) * (pair_h + pad) + pad
        # Nearest for upscaling keeps tiny images' pixels visible; bicubic for downscaling.
        for j, image in enumerate((guide, rendered)):
            filt = Image.Resampling.NEAREST if image.width < cell else Image.Resampling.BICUBIC
            sheet.paste(image.convert("RGB").resize((cell, cell), filt), (x0 + j * (cell + pad), y0))
        draw.text((x0, y0 + cell + 1), caption[: 2 * cell // 6], fill="black", font=font)
    return sheet


def write_contact_sheet(output: Path, plan: BuildPlan, inputs: BuildInputs, count: int) -> Path:
    """``contact_sheet.png``: the first ``count`` planned images beside their guides (read back
    from the written shards)."""
    from PIL import Image

    wanted = {s.key: s for s in plan.samples[:count]}
    rendered = {}
    for shard in plan.shards:
        if not wanted.keys() - rendered.keys():
            break
        path = output / shard.filename
        with open(path, "rb") as f:
            for key, spans in scan_tar(f, str(path)):
                if key in wanted:
                    ext = next(e for e in spans if e not in ("cls", "json"))
                    rendered[key] = decode_image(read_member(f, spans[ext]), str(path), key, ext)
    pairs = []
    for key, s in wanted.items():
        # An image of uniform targets has no guide: a grey square stands in its place.
        guide = (inputs.images.image(inputs.images.index_of(s.source_id)) if s.source_id
                 else Image.new("RGB", rendered[key].size, (128, 128, 128)))
        pairs.append((guide, rendered[key], f"{s.class_name} ({s.mode}{'+adv' if s.adversarial else ''})"))
    sheet = contact_sheet(pairs)
    path = output / CONTACT_SHEET_FILE
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    _logger.info("wrote %s (%d guide/render pairs)", path, len(pairs))
    return path
