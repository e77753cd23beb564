"""``actgen-data browse``: a static HTML gallery of a data set, one self-contained folder
(``index.html`` + ``thumbs/``): no server, no network, open it from disk or serve it as files.

Filters by class, mode and round; each image's provenance on demand. The provenance comes from
a data set received from elsewhere, so the page never parses it as HTML: it is embedded as JSON
(with ``<`` escaped, so no string can close the script element) and shown with ``textContent``.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Optional

from actgen.shards.portable import portable
from actgen.shards.reader import ShardRandomAccess

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
<label>round <select id="f-round"></select></label></header>
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
  select.addEventListener("change", show);
}}
const cards = samples.map(s => {{
  const card = document.createElement("div"); card.className = "card";
  card.dataset.class = s.class; card.dataset.mode = s.mode; card.dataset.round = String(s.round);
  const img = document.createElement("img"); img.src = s.thumb; img.alt = s.key; img.loading = "eager";
  const label = document.createElement("span"); label.textContent = s.class + " · " + s.mode;
  card.append(img, label);
  card.addEventListener("click", () => {{ detail.textContent = s.key + "\\n" + JSON.stringify(s.provenance, null, 2); }});
  grid.append(card); return card;
}});
function show() {{
  let n = 0;
  for (const card of cards) {{
    const ok = Object.entries(filters).every(([f, id]) => {{
      const v = document.getElementById(id).value; return v === "all" || card.dataset[f] === v; }});
    card.style.display = ok ? "" : "none"; n += ok;
  }}
  document.getElementById("count").textContent = n + " of " + cards.length + " images";
}}
show();
</script></body></html>
"""


def write_gallery(dataset: str | Path, output: str | Path, thumb: int = 96, limit: Optional[int] = None,
                  overwrite: bool = False) -> int:
    """Write the gallery of ``dataset`` into ``output``; return the number of images in it.

    Raises:
        FormatError: ``dataset`` is not a finished data set.
        FileExistsError: ``output`` holds a gallery and ``overwrite`` is false.
        ValueError: ``thumb`` or ``limit`` out of range.
    """
    from PIL import Image

    if not 16 <= thumb <= 512:
        raise ValueError(f"thumb = {thumb}: expected a side in pixels in 16..512")
    if limit is not None and limit < 1:
        raise ValueError(f"limit = {limit}: expected at least 1")
    data = ShardRandomAccess(dataset)
    out = Path(output)
    if (out / INDEX_HTML).exists():
        if not overwrite:
            raise FileExistsError(f"{out / INDEX_HTML}: a gallery is already here; pass --overwrite")
        (out / INDEX_HTML).unlink()            # unfinished until the new page is written
        shutil.rmtree(out / THUMBS, ignore_errors=True)
    (out / THUMBS).mkdir(parents=True, exist_ok=True)
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
    tmp = out / f".{INDEX_HTML}.partial"
    tmp.write_text(_PAGE.format(title=title, thumb=thumb, data=blob), encoding="utf-8")
    tmp.replace(out / INDEX_HTML)              # the page last: a gallery without it is unfinished
    return n
