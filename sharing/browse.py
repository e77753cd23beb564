"""``actgen-data browse``: a static HTML gallery of a data set, one self-contained folder
(``index.html`` + ``thumbs/``): no server, no network, open it from disk or serve it as files.

Filters by class, mode and round; each image's provenance on demand. The provenance comes from
a data set received from elsewhere, so the page never parses it as HTML: it is embedded as JSON
(with ``<`` escaped, so no string can close the script element) and shown with ``textContent``.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Optional

from actgen.shards.portable import portable
from actgen.shards.reader import ShardRandomAccess

from .outputs import check_output, replacing

INDEX_HTML = "index.html"
THUMBS = "thumbs"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 16px; background: #fafafa; }}
header {{ display: flex; gap: 16px; align-items: center; flex-wrap: wrap; margin-bottom: 12px; }}
#grid {{ display: flex; flex-wrap: wrap; gap: 8px; }}
.card {{ background: #fff; border: 1px solid #ddd; padding: 4px; width: {thumb}px; cursor: pointer; }}
.card img {{ width: {thumb}px; height: {thumb}px; image-rendering: pixelated; display: block; }}
.card span {{ font-size: 11px; display: block; overflow: hidden; white-space: nowrap; }}
#detail {{ white-space: pre-wrap; font: 12px monospace; background: #fff; border: 1px solid #ddd;
           padding: 8px; margin-top: 12px; max-height: 40vh; overflow: auto; }}
</style></head>
<body>
<header><strong>{title}</strong> <span id="count"></span>
<label>class <select id="f-class"></select></label>
<label>mode <select id="f-mode"></select></label>
<label>round <select id="f-round"></select></label>
<button id="prev">&lt; previous</button> <span id="page"></span> <button id="next">next &gt;</button></header>
<div id="grid"></div>
<pre id="detail">Click an image for its provenance.</pre>
<script type="application/json" id="data">{data}</script>
<script>
"use strict";
const samples = JSON.parse(document.getElementById("data").textContent);
const grid = document.getElementById("grid"), detail = document.getElementById("detail");
const filters = {{class: "f-class", mode: "f-mode", round: "f-round"}};
for (const [field, id] of Object.entries(filters)) {{
  const select = document.getElementById(id);
  const values = [...new Set(samples.map(s => String(s[field])))].sort();
  for (const v of ["all", ...values]) {{ const o = document.createElement("option"); o.value = o.textContent = v; select.append(o); }}
}}
// Pages of PAGE_SIZE cards: only the shown page's thumbnails are loaded.
const PAGE_SIZE = {page_size};
let page = 0;
const cards = samples.map(s => {{
  const card = document.createElement("div"); card.className = "card";
  card.dataset.class = s.class; card.dataset.mode = s.mode; card.dataset.round = String(s.round);
  const img = document.createElement("img"); img.dataset.src = s.thumb; img.alt = s.key; img.loading = "eager";
  const label = document.createElement("span"); label.textContent = s.class + " · " + s.mode;
  card.append(img, label);
  card.addEventListener("click", () => {{ detail.textContent = s.key + "\\n" + JSON.stringify(s.provenance, null, 2); }});
  grid.append(card); return card;
}});
function show() {{
  const matching = cards.filter(card => Object.entries(filters).every(([f, id]) => {{
    const v = document.getElementById(id).value; return v === "all" || card.dataset[f] === v; }}));
  const pages = Math.max(1, Math.ceil(matching.length / PAGE_SIZE));
  page = Math.min(Math.max(page, 0), pages - 1);
  const shown = new Set(matching.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE));
  for (const card of cards) {{
    const on = shown.has(card); card.style.display = on ? "" : "none";
    const img = card.firstChild; if (on && !img.src) img.src = img.dataset.src;
  }}
  document.getElementById("count").textContent = matching.length + " of " + cards.length + " images";
  document.getElementById("page").textContent = "page " + (page + 1) + " of " + pages;
  document.getElementById("prev").disabled = page === 0;
  document.getElementById("next").disabled = page >= pages - 1;
}}
for (const id of Object.values(filters)) document.getElementById(id).addEventListener("change", () => {{ page = 0; show(); }});
document.getElementById("prev").addEventListener("click", () => {{ page -= 1; show(); }});
document.getElementById("next").addEventListener("click", () => {{ page += 1; show(); }});
show();
</script></body></html>
"""


THUMB_BUDGET = 2000
"""Thumbnails a gallery holds unless asked for all: 20,000 images made a 28.6 MB page that a
browser took a minute to open."""
PAGE_SIZE = 200


def write_gallery(dataset: str | Path, output: str | Path, thumb: int = 96, limit: Optional[int] = THUMB_BUDGET,
                  overwrite: bool = False, page_size: int = PAGE_SIZE) -> int:
    """Write the gallery of ``dataset`` into ``output``; return the number of images in it.

    ``limit``: at most this many images, the data set's first (default ``THUMB_BUDGET``; None:
    all); ``page_size``: thumbnails shown (and loaded) per page.

    Raises:
        FormatError: ``dataset`` is not a finished data set.
        FileExistsError: ``output`` holds a gallery and ``overwrite`` is false.
        ValueError: ``thumb`` or ``limit`` out of range.
        ValueError: the output is, contains or lies inside the data set, or holds other files.
    """
    if not 16 <= thumb <= 512:
        raise ValueError(f"thumb = {thumb}: expected a side in pixels in 16..512")
    if limit is not None and limit < 1:
        raise ValueError(f"limit = {limit}: expected at least 1")
    if page_size < 1:
        raise ValueError(f"page_size = {page_size}: expected at least 1")
    data = ShardRandomAccess(dataset)      # first: "not a data set" is the more useful error
    final = check_output(output, [dataset], overwrite, "gallery")
    with replacing(final) as out:      # built aside, swapped in whole: nothing through a link
        n = _write_gallery(data, dataset, out, thumb, limit, page_size)
    return n


def _write_gallery(data: ShardRandomAccess, dataset: str | Path, out: Path, thumb: int, limit: Optional[int],
                   page_size: int) -> int:
    from PIL import Image

    (out / THUMBS).mkdir()
    n = len(data) if limit is None else min(limit, len(data))
    rows = []
    for i in range(n):
        sample = data.sample(i)
        name = f"{i:06d}.png"                  # not the key: a file name from a data set is never trusted
        sample.image.convert("RGB").resize((thumb, thumb), Image.NEAREST).save(out / THUMBS / name)
        p = sample.provenance
        rows.append({"key": sample.key, "class": data.class_names[sample.label],
                     "mode": str((p.get("guidance") or {}).get("mode", "unknown")), "round": p.get("round"),
                     "thumb": f"{THUMBS}/{name}", "provenance": portable(p, dataset)})
    # "<" escaped: nothing in the data can end the <script> element it sits in.
    blob = json.dumps(rows, sort_keys=True).replace("<", "\\u003c")
    title = html.escape(f"{data.index.name}: {n} of {len(data)} images")
    (out / INDEX_HTML).write_text(_PAGE.format(title=title, thumb=thumb, data=blob, page_size=int(page_size)),
                                  encoding="utf-8")
    return n
