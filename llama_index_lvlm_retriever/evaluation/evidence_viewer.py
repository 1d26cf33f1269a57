"""The evidence viewer: one static HTML page showing each query beside its retrieved evidence.

Per case: the query image, the answer with its probability, support and abstain flag (and the
gold label and whether the answer is right, where gold exists), then every retrieved image with
its caption, the head that found it, its retrieval score and the reader's prediction given that
neighbour alone, which is how a radiologist judges whether to trust the answer. Cases can be
filtered (abstained, answered, correct, wrong, inconsistent, errors) and sorted (input order,
probability, support) with plain inline JavaScript; the initial state can be set in the URL
fragment (``evidence.html#filter=abstain&sort=support-asc``).

The page is self-contained: no server, no external script, style sheet or font. Images are
embedded as data URIs, or, for large runs, written as thumbnails into a folder beside the page.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from llama_index_lvlm_retriever import metadata_keys as keys
from llama_index_lvlm_retriever._io import atomic_write_bytes, atomic_write_text
from llama_index_lvlm_retriever.data.images import ImageLoadError, load_image
from llama_index_lvlm_retriever.evaluation._prediction_rows import (
    NEIGHBOUR_IMAGE_PATH,
    NEIGHBOUR_TEXT,
    ROW_CASE_ID,
    ROW_CORRECT,
    ROW_ERROR,
    ROW_GOLD,
    ROW_IMAGE_PATH,
    ROW_QUESTION,
)

__all__ = ["AUTO_EMBED_MAX_CASES", "ViewerImages", "write_evidence_viewer"]

logger = logging.getLogger(__name__)

ViewerImages = Literal["auto", "embed", "copy"]
AUTO_EMBED_MAX_CASES = 200
"""``images="auto"`` embeds images up to this many cases and copies thumbnails beyond."""
_FILES_SUFFIX = "_files"


def write_evidence_viewer(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str = "Evidence viewer",
    labels: Sequence[str] | None = None,
    images: ViewerImages = "auto",
    max_side: int = 256,
) -> Path:
    """Write the evidence viewer for prediction rows (as :func:`~.predict.predict` returns them).

    Each row needs ``case_id`` and ``image_path``; the page shows whatever else it has:
    ``answer``, ``probability``, ``support``, ``weighted_support``,
    ``consistent``, ``abstain``, ``gold``, ``correct``, ``error`` and ``neighbours``
    (each with ``kb_id``, ``head``, ``retrieval_score``, ``prediction``, ``probability``,
    ``image_path``, ``text``). ``evaluate`` and ``diagnose`` results fit once mapped to these keys.

    Args:
        rows: The cases, in the order the page lists them by default.
        path: The HTML file to write (its folder is created).
        title: Page title.
        labels: The task's labels, shown in the header.
        images: ``"embed"``: thumbnails as data URIs (one file to share). ``"copy"``: thumbnails
            as PNG files in ``<stem>_files/`` beside the page (keep the two together).
            ``"auto"``: embed up to :data:`AUTO_EMBED_MAX_CASES` cases.
        max_side: Longest side of the thumbnails in pixels.

    Returns:
        The path written.

    Raises:
        ValueError: ``images`` is not one of the modes, or ``max_side`` < 16.

    Example:
        .. code-block:: python

            rows = predict(cases, retriever, reader)
            write_evidence_viewer(rows, "review/evidence.html", labels=reader.task.labels)
    """
    if images not in ("auto", "embed", "copy"):
        raise ValueError(f"images must be 'auto', 'embed' or 'copy', got {images!r}")
    if max_side < 16:
        raise ValueError(f"max_side must be >= 16 pixels, got {max_side}")
    path = Path(path)
    mode = images if images != "auto" else ("embed" if len(rows) <= AUTO_EMBED_MAX_CASES else "copy")
    store = _ImageStore(mode, path.parent / f"{path.stem}{_FILES_SUFFIX}", max_side)
    cards = [_card(i, row, store) for i, row in enumerate(rows)]
    has_gold = any(row.get(ROW_CORRECT) is not None for row in rows)
    page = _PAGE.format(
        title=_e(title),
        summary=_e(_summary(rows, labels)),
        gold_disabled="" if has_gold else " disabled",
        cards="\n".join(cards),
        style=_STYLE,
        script=_SCRIPT,
    )
    atomic_write_text(path, page)
    logger.debug("wrote the evidence viewer (%d cases, images %s) to %s", len(rows), mode, path)
    return path


class _ImageStore:
    """Thumbnails of image paths as ``src`` values, each image decoded once."""

    def __init__(self, mode: str, folder: Path, max_side: int) -> None:
        self.mode, self.folder, self.max_side = mode, folder, max_side
        self._cache: dict[str, str | None] = {}

    def src(self, image_path: str | None) -> str | None:
        if not image_path:
            return None
        if image_path not in self._cache:
            self._cache[image_path] = self._make(image_path)
        return self._cache[image_path]

    def _make(self, image_path: str) -> str | None:
        try:
            img = load_image(image_path)
        except (ImageLoadError, OSError, ValueError) as err:
            logger.warning("evidence viewer: cannot show %s (%s)", image_path, err)
            return None
        img.thumbnail((self.max_side, self.max_side))
        buffer = io.BytesIO()
        img.save(buffer, format="PNG", optimize=True)
        data = buffer.getvalue()
        if self.mode == "embed":
            return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        name = hashlib.sha256(image_path.encode("utf-8")).hexdigest()[:20] + ".png"
        atomic_write_bytes(self.folder / name, data)
        return f"{self.folder.name}/{name}"


def _card(index: int, row: Mapping[str, Any], store: _ImageStore) -> str:
    answer = row.get(keys.LABEL)
    correct = row.get(ROW_CORRECT)
    error = row.get(ROW_ERROR)
    consistent = row.get(keys.CONSISTENT)
    data = {
        "index": index,
        "abstain": _flag(row.get(keys.ABSTAIN)),
        "correct": _flag(correct),
        "consistent": _flag(consistent),
        "error": _flag(error is not None),
        "probability": _num(row.get(keys.LABEL_PROBABILITY)),
        "support": _num(row.get(keys.SUPPORT)),
    }
    attributes = " ".join(f'data-{key}="{_e(str(value))}"' for key, value in data.items())
    badges = []
    if row.get(keys.ABSTAIN):
        badges.append('<span class="badge abstain">abstain</span>')
    if correct is not None:
        badges.append(f'<span class="badge {"right" if correct else "wrong"}">{"correct" if correct else "wrong"}</span>')
    if consistent is False:
        badges.append('<span class="badge inconsistent">neighbours disagree</span>')
    facts = [
        ("probability", _fmt(row.get(keys.LABEL_PROBABILITY))),
        ("support", _fmt(row.get(keys.SUPPORT))),
        ("weighted support", _fmt(row.get(keys.WEIGHTED_SUPPORT))),
    ]
    if row.get(ROW_GOLD) is not None:
        facts.append(("gold", _label(row.get(ROW_GOLD))))
    fact_html = "".join(f"<dt>{_e(name)}</dt><dd>{_e(value)}</dd>" for name, value in facts)
    question = f'<p class="question">{_e(str(row[ROW_QUESTION]))}</p>' if row.get(ROW_QUESTION) else ""
    error_html = f'<p class="error">{_e(str(error))}</p>' if error is not None else ""
    neighbours = "".join(
        _neighbour(rank, entry, store, answer) for rank, entry in enumerate(row.get(keys.NEIGHBOUR_PREDICTIONS) or [], start=1)
    )
    return (
        f'<article class="case" id="case-{index}" {attributes}>'
        f'<div class="query">{_figure(store.src(row.get(ROW_IMAGE_PATH)), "query")}'
        f'<div class="answer"><h2 title="{_e(str(row[ROW_CASE_ID]))}">{_e(str(row[ROW_CASE_ID]))}</h2>{question}'
        f'<p class="label">answer: <b>{_e(_label(answer))}</b> {"".join(badges)}</p>'
        f"<dl>{fact_html}</dl>{error_html}</div></div>"
        f'<div class="neighbours">{neighbours or "<p class=empty>no neighbours</p>"}</div>'
        "</article>"
    )


def _neighbour(rank: int, entry: Mapping[str, Any], store: _ImageStore, answer: Any) -> str:
    head = entry.get(keys.NEIGHBOUR_HEAD)
    text = str(entry.get(NEIGHBOUR_TEXT) or "")
    prediction = _label(entry.get(keys.NEIGHBOUR_LABEL))
    agrees = "1" if prediction == _label(answer) else "0"  # does this neighbour alone lead to the answer?
    return (
        f'<figure class="neighbour" data-head="{_e(str(head))}" data-agrees="{agrees}">'
        f"{_img(store.src(entry.get(NEIGHBOUR_IMAGE_PATH)), f'neighbour {rank}')}"
        f"<figcaption><b>#{rank} {_e(str(entry.get(keys.NEIGHBOUR_KB_ID)))}</b>"
        f'<span class="meta">head {_e(str(head or "-"))} · score {_e(_fmt(entry.get(keys.NEIGHBOUR_RETRIEVAL_SCORE)))}</span>'
        f'<span class="pred">predicts <b>{_e(prediction)}</b> (p = {_e(_fmt(entry.get(keys.NEIGHBOUR_PROBABILITY)))})</span>'
        f'<span class="caption" title="{_e(text)}">{_e(text)}</span></figcaption></figure>'
    )


def _figure(src: str | None, alt: str) -> str:
    return f'<figure class="query-image">{_img(src, alt)}</figure>'


def _img(src: str | None, alt: str) -> str:
    if src is None:
        return f'<div class="noimage">{_e(alt)}: image unavailable</div>'
    return f'<img src="{_e(src)}" alt="{_e(alt)}" loading="lazy">'


def _summary(rows: Sequence[Mapping[str, Any]], labels: Sequence[str] | None) -> str:
    n = len(rows)
    abstained = sum(bool(row.get(keys.ABSTAIN)) for row in rows)
    inconsistent = sum(row.get(keys.CONSISTENT) is False for row in rows)
    scored = [row for row in rows if row.get(ROW_CORRECT) is not None]
    parts = [f"{n} cases", f"{abstained} abstained", f"{inconsistent} with disagreeing neighbours"]
    if scored:
        right = sum(bool(row[ROW_CORRECT]) for row in scored)
        parts.append(f"accuracy {right}/{len(scored)} = {right / len(scored):.3f}")
    if labels:
        parts.append("labels: " + ", ".join(str(label) for label in labels))
    return " · ".join(parts)


def _label(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "(none)"
    return str(value)


def _flag(value: Any) -> str:
    return "" if value is None else ("1" if value else "0")


def _num(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else json.dumps(float(value))


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{position:sticky;top:0;background:#1d2330;color:#fff;padding:10px 18px;z-index:1}
header h1{font-size:18px;margin:0 0 4px}
header .summary{margin:0 0 6px;color:#c9cfdb}
.controls label{margin-right:16px}
.controls select{font:inherit}
#count{color:#c9cfdb}
main{padding:12px 18px}
.case{display:flex;gap:16px;background:#fff;border-radius:8px;padding:12px;margin:0 0 12px;box-shadow:0 1px 3px #0002;border-left:6px solid #5b8def}
.case[hidden]{display:none}
.case[data-abstain="1"]{border-left-color:#e0a100}
.case[data-correct="0"]{border-left-color:#d64545}
.case[data-error="1"]{border-left-color:#888}
.query{display:flex;gap:12px;min-width:400px;max-width:440px}
figure{margin:0}
img{display:block;width:150px;height:150px;object-fit:contain;border-radius:4px;background:#000}
.query-image img{width:180px;height:180px}
.answer h2{font-size:13px;margin:0 0 4px;word-break:break-all}
.answer .label{margin:4px 0}
.answer dl{display:grid;grid-template-columns:auto auto;gap:0 10px;margin:4px 0}
.answer dt{color:#5a6270}.answer dd{margin:0;font-variant-numeric:tabular-nums}
.question{font-style:italic;margin:0;color:#5a6270}
.error{color:#d64545}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;color:#fff;margin-left:4px}
.badge.abstain{background:#e0a100}.badge.right{background:#2f9e44}.badge.wrong{background:#d64545}.badge.inconsistent{background:#7a5af8}
.neighbours{display:flex;gap:10px;flex-wrap:wrap}
.neighbour{width:170px;font-size:12px}
.neighbour figcaption span{display:block}
.neighbour .meta{color:#5a6270}
.neighbour[data-agrees="0"] .pred{color:#d64545}
.legend{font-size:12px;color:#c9cfdb;margin-left:12px}
.legend i{display:inline-block;width:10px;height:10px;margin:0 3px 0 8px;vertical-align:middle}
.neighbour .caption{color:#30384a;max-height:4.2em;overflow:hidden}
.neighbour[data-head="text"] img{outline:3px solid #7a5af8}
.neighbour[data-head="image"] img{outline:3px solid #5b8def}
.noimage{width:140px;height:100px;display:flex;align-items:center;justify-content:center;background:#e4e6eb;color:#5a6270;font-size:12px;text-align:center;border-radius:4px}
.empty{color:#5a6270}
"""

_SCRIPT = """
(function () {
  var container = document.getElementById("cases");
  var cards = Array.prototype.slice.call(container.querySelectorAll("article.case"));
  var filter = document.getElementById("filter");
  var sort = document.getElementById("sort");
  var count = document.getElementById("count");
  var keep = {
    all: function () { return true; },
    abstain: function (c) { return c.dataset.abstain === "1"; },
    answered: function (c) { return c.dataset.abstain === "0"; },
    correct: function (c) { return c.dataset.correct === "1"; },
    wrong: function (c) { return c.dataset.correct === "0"; },
    inconsistent: function (c) { return c.dataset.consistent === "0"; },
    error: function (c) { return c.dataset.error === "1"; }
  };
  function num(c, key) { var v = parseFloat(c.dataset[key]); return isNaN(v) ? -1 : v; }
  function index(a, b) { return num(a, "index") - num(b, "index"); }
  var orders = {
    input: index,
    "probability-asc": function (a, b) { return num(a, "probability") - num(b, "probability") || index(a, b); },
    "probability-desc": function (a, b) { return num(b, "probability") - num(a, "probability") || index(a, b); },
    "support-asc": function (a, b) { return num(a, "support") - num(b, "support") || index(a, b); },
    "support-desc": function (a, b) { return num(b, "support") - num(a, "support") || index(a, b); }
  };
  function apply() {
    var test = keep[filter.value] || keep.all;
    var shown = 0;
    cards.slice().sort(orders[sort.value] || index).forEach(function (c) {
      container.appendChild(c);
      c.hidden = !test(c);
      if (!c.hidden) { shown += 1; }
    });
    count.textContent = "showing " + shown + " of " + cards.length;
    document.body.setAttribute("data-filter", filter.value);
    document.body.setAttribute("data-sort", sort.value);
    try { history.replaceState(null, "", "#filter=" + filter.value + "&sort=" + sort.value); } catch (e) { /* file:// may refuse */ }
  }
  var params = new URLSearchParams(location.hash.slice(1));
  if (keep.hasOwnProperty(params.get("filter"))) { filter.value = params.get("filter"); }
  if (orders.hasOwnProperty(params.get("sort"))) { sort.value = params.get("sort"); }
  filter.addEventListener("change", apply);
  sort.addEventListener("change", apply);
  apply();
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="llama-index-lvlm-retriever">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="summary">{summary}</p>
<div class="controls">
<label>Show <select id="filter">
<option value="all">all cases</option>
<option value="abstain">abstained</option>
<option value="answered">answered (not abstained)</option>
<option value="correct"{gold_disabled}>correct</option>
<option value="wrong"{gold_disabled}>wrong</option>
<option value="inconsistent">neighbours disagree</option>
<option value="error">errors</option>
</select></label>
<label>Sort by <select id="sort">
<option value="input">input order</option>
<option value="probability-asc">probability, lowest first</option>
<option value="probability-desc">probability, highest first</option>
<option value="support-asc">support, lowest first</option>
<option value="support-desc">support, highest first</option>
</select></label>
<span id="count"></span>
<span class="legend">frame: <i style="background:#5b8def"></i>image head <i style="background:#7a5af8"></i>text head; a red prediction disagrees with the answer</span>
</div>
</header>
<main id="cases">
{cards}
</main>
<script>{script}</script>
</body>
</html>
"""
