"""The evidence viewer: one static HTML page showing each query beside its retrieved evidence.

Per case: the query image, the answer by name with its full label distribution, probability,
support and abstain flag (and the gold label and whether the answer is right, where gold exists),
then every retrieved image with its caption (a click shows all of it), its own knowledge-base
label, the head that found it, its retrieval score and the reader's prediction given that
neighbour alone, which is how a radiologist judges whether to trust the answer. A case whose
answer no neighbour predicted alone says why a mixture can do that. Images zoom on click.

The header carries a "research use only, not a medical device" notice and the provenance
(package version, encoder, knowledge base folder and fingerprint, heads, reader, task, date).
A reviewer marks each case agree/disagree with a note and exports the marks as CSV or JSON; the
marks stay in the browser (localStorage) and nothing leaves the page. Cases can be filtered
(abstained, answered, correct, wrong, inconsistent, errors, not yet reviewed) and sorted (input
order, probability, support); the initial state can be set in the URL fragment
(``evidence.html#filter=abstain&sort=support-asc``).

The page is self-contained: no server, no external script, style sheet or font. Each distinct
image is encoded once, as a JPEG thumbnail (no re-encoding passes), and referenced by id from
every card that shows it: embedded as a data URI, or, for large runs, written into a folder
beside the page.
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

from llama_index_lvlm_retriever.data.images import ImageLoadError, load_image
from llama_index_lvlm_retriever.evaluation._prediction_rows import (
    NEIGHBOUR_IMAGE_PATH,
    NEIGHBOUR_KB_LABEL,
    NEIGHBOUR_TEXT,
    ROW_CASE_ID,
    ROW_CORRECT,
    ROW_ERROR,
    ROW_GOLD,
    ROW_IMAGE_PATH,
    ROW_QUESTION,
)
from llama_index_lvlm_retriever.evaluation._viewer_assets import (
    MIXTURE_NOTE,
    PAGE,
    RESEARCH_NOTICE,
    SCRIPT,
    STYLE,
)
from llama_index_lvlm_retriever.outputs import metadata_keys as keys
from llama_index_lvlm_retriever.storage.files import atomic_write_bytes, atomic_write_text

__all__ = ["AUTO_EMBED_MAX_CASES", "JPEG_QUALITY", "RESEARCH_NOTICE", "ViewerImages", "write_evidence_viewer"]

logger = logging.getLogger(__name__)

ViewerImages = Literal["auto", "embed", "copy"]
AUTO_EMBED_MAX_CASES = 200
"""``images="auto"`` embeds images up to this many cases and copies thumbnails beyond."""
JPEG_QUALITY = 85
"""Quality of the JPEG thumbnails: near-lossless at review size; 50 cases with 250 distinct ELPV images stay under 3 MB."""
_FILES_SUFFIX = "_files"


def write_evidence_viewer(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str = "Evidence viewer",
    labels: Sequence[str] | None = None,
    images: ViewerImages = "auto",
    max_side: int = 256,
    label_names: Mapping[str, str] | None = None,
    provenance: Mapping[str, str] | None = None,
) -> Path:
    """Write the evidence viewer for prediction rows (as :func:`~.predict.predict` returns them).

    Each row needs ``case_id`` and ``image_path``; the page shows whatever else it has:
    ``answer``, ``probability``, ``distribution`` (label -> probability), ``support``,
    ``weighted_support``, ``consistent``, ``abstain``, ``gold``, ``correct``, ``error`` and
    ``neighbours`` (each with ``kb_id``, ``kb_label``, ``head``, ``retrieval_score``,
    ``prediction``, ``probability``, ``image_path``, ``text``): the vocabulary of
    :mod:`~llama_index_lvlm_retriever.outputs.metadata_keys`. ``evaluate`` and ``diagnose`` rows use it too.

    Args:
        rows: The cases, in the order the page lists them by default.
        path: The HTML file to write (its folder is created).
        title: Page title.
        labels: The task's labels, shown in the header.
        images: ``"embed"``: thumbnails as data URIs (one file to share). ``"copy"``: thumbnails
            as JPEG files in ``<stem>_files/`` beside the page (keep the two together).
            ``"auto"``: embed up to :data:`AUTO_EMBED_MAX_CASES` cases.
        max_side: Longest side of the thumbnails in pixels (also what the zoom shows).
        label_names: Label -> the name shown for it (e.g. ``"malignant (yes)"``); labels not in
            it are shown as they are.
        provenance: Header facts, name -> text (see
            :func:`~llama_index_lvlm_retriever.evaluation.viewer_header.viewer_header`).

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
    names = {str(k): str(v) for k, v in (label_names or {}).items()}
    cards = [_card(i, row, store, names) for i, row in enumerate(rows)]
    has_gold = any(row.get(ROW_CORRECT) is not None for row in rows)
    # The key of the reviewer's marks in localStorage: another run (other answers, models or date) is
    # another review, so marks never carry over to a page they were not made on.
    identity = [title, [[str(row[ROW_CASE_ID]), _label(row.get(keys.ANSWER))] for row in rows], dict(provenance or {})]
    page_id = hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:12]
    page = PAGE.format(
        title=_e(title),
        page_id=page_id,
        notice=_e(RESEARCH_NOTICE),
        summary=_e(_summary(rows, labels, names)),
        provenance=_provenance(provenance),
        gold_disabled="" if has_gold else " disabled",
        cards="\n".join(cards),
        images=json.dumps(store.sources).replace("</", "<\\/"),  # no "</script>" inside the JSON block
        style=STYLE,
        script=SCRIPT,
    )
    atomic_write_text(path, page)
    logger.debug("wrote the evidence viewer (%d cases, %d images, %s) to %s", len(rows), len(store.sources), mode, path)
    return path


class _ImageStore:
    """Each distinct image path decoded and encoded once, as a JPEG thumbnail; cards refer to it by id."""

    def __init__(self, mode: str, folder: Path, max_side: int) -> None:
        self.mode, self.folder, self.max_side = mode, folder, max_side
        self._ids: dict[str, str | None] = {}
        self.sources: dict[str, str] = {}
        """Image id -> ``src`` (a data URI or a relative file path), written once into the page."""

    def image_id(self, image_path: str | None) -> str | None:
        if not image_path:
            return None
        if image_path not in self._ids:
            src = self._make(image_path)
            image_id = None if src is None else f"i{len(self.sources)}"
            if image_id is not None and src is not None:
                self.sources[image_id] = src
            self._ids[image_path] = image_id
        return self._ids[image_path]

    def _make(self, image_path: str) -> str | None:
        try:
            img = load_image(image_path)
        except (ImageLoadError, OSError, ValueError) as err:
            logger.warning("evidence viewer: cannot show %s (%s)", image_path, err)
            return None
        img.thumbnail((self.max_side, self.max_side))
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")  # JPEG holds grey or RGB; alpha and palettes are flattened
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=JPEG_QUALITY)  # one fast pass: no optimize/progressive
        data = buffer.getvalue()
        if self.mode == "embed":
            return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
        name = hashlib.sha256(image_path.encode("utf-8")).hexdigest()[:20] + ".jpg"
        atomic_write_bytes(self.folder / name, data)
        return f"{self.folder.name}/{name}"


def _card(index: int, row: Mapping[str, Any], store: _ImageStore, names: Mapping[str, str]) -> str:
    answer = row.get(keys.ANSWER)
    correct = row.get(ROW_CORRECT)
    error = row.get(ROW_ERROR)
    consistent = row.get(keys.CONSISTENT)
    data = {
        "index": index,
        "case-id": str(row[ROW_CASE_ID]),
        "answer": _label(answer, names) if answer is not None else "",
        "gold": _label(row.get(ROW_GOLD), names) if row.get(ROW_GOLD) is not None else "",
        "abstain": _flag(row.get(keys.ABSTAIN)),
        "correct": _flag(correct),
        "consistent": _flag(consistent),
        "error": _flag(error is not None),
        "probability": _num(row.get(keys.PROBABILITY)),
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
        ("probability", _fmt(row.get(keys.PROBABILITY))),
        ("support", _fmt(row.get(keys.SUPPORT))),
        ("weighted support", _fmt(row.get(keys.WEIGHTED_SUPPORT))),
    ]
    if row.get(ROW_GOLD) is not None:
        facts.append(("gold", _label(row.get(ROW_GOLD), names)))
    fact_html = "".join(f"<dt>{_e(name)}</dt><dd>{_e(value)}</dd>" for name, value in facts)
    question = f'<p class="question">{_e(str(row[ROW_QUESTION]))}</p>' if row.get(ROW_QUESTION) else ""
    error_html = f'<p class="error">{_e(str(error))}</p>' if error is not None else ""
    entries = list(row.get(keys.NEIGHBOURS) or [])
    neighbours = "".join(_neighbour(rank, entry, store, answer, names) for rank, entry in enumerate(entries, start=1))
    mixture = ""
    if answer is not None and entries and not any(_label(e.get(keys.NEIGHBOUR_PREDICTION)) == _label(answer) for e in entries):
        mixture = f'<p class="mixture">{_e(MIXTURE_NOTE)}</p>'
    review = (
        f'<div class="review">review: <label><input type="radio" name="review-{index}" value="agree"> agree</label> '
        f'<label><input type="radio" name="review-{index}" value="disagree"> disagree</label>'
        '<textarea placeholder="note (stays in this browser until exported)"></textarea></div>'
    )
    return (
        f'<article class="case" id="case-{index}" {attributes}>'
        f'<div class="query">{_figure(store.image_id(row.get(ROW_IMAGE_PATH)), "query", row.get(ROW_IMAGE_PATH))}'
        f'<div class="answer"><h2 title="{_e(str(row[ROW_CASE_ID]))}">{_e(str(row[ROW_CASE_ID]))}</h2>{question}'
        f'<p class="label">answer: <b>{_e(_label(answer, names))}</b> {"".join(badges)}</p>'
        f"{_distribution(row.get(keys.DISTRIBUTION), answer, names)}{mixture}"
        f"<dl>{fact_html}</dl>{error_html}{review}</div></div>"
        f'<div class="neighbours">{neighbours or "<p class=empty>no neighbours</p>"}</div>'
        "</article>"
    )


def _distribution(distribution: Any, answer: Any, names: Mapping[str, str]) -> str:
    """The answer's full label distribution as a small table with bars, the answer in bold."""
    if not isinstance(distribution, Mapping) or not distribution:
        return ""
    chosen = {str(a) for a in answer} if isinstance(answer, (list, tuple)) else {str(answer)}
    rows = []
    for label, p in distribution.items():
        value = float(p) if p is not None else math.nan
        width = 0 if math.isnan(value) else round(60 * min(max(value, 0.0), 1.0))
        css = ' class="chosen"' if str(label) in chosen else ""
        rows.append(
            f"<tr{css}><td>{_e(_label(label, names))}</td>"
            f'<td><span class="bar" style="width:{width}px"></span></td><td class="p">{_e(_fmt(p))}</td></tr>'
        )
    return f'<table class="dist" title="aggregated probability of each label">{"".join(rows)}</table>'


def _neighbour(rank: int, entry: Mapping[str, Any], store: _ImageStore, answer: Any, names: Mapping[str, str]) -> str:
    head = entry.get(keys.NEIGHBOUR_HEAD)
    text = str(entry.get(NEIGHBOUR_TEXT) or "")
    prediction = _label(entry.get(keys.NEIGHBOUR_PREDICTION), names)
    kb_label = entry.get(NEIGHBOUR_KB_LABEL)
    agrees = "1" if prediction == _label(answer, names) else "0"  # does this neighbour alone lead to the answer?
    return (
        f'<figure class="neighbour" data-head="{_e(str(head))}" data-agrees="{agrees}">'
        f"{_img(store.image_id(entry.get(NEIGHBOUR_IMAGE_PATH)), f'neighbour {rank}', entry.get(NEIGHBOUR_IMAGE_PATH))}"
        f"<figcaption><b>#{rank} {_e(str(entry.get(keys.NEIGHBOUR_KB_ID)))}</b>"
        f'<span class="kb-label">KB label: <b>{_e(_label(kb_label, names))}</b></span>'
        f'<span class="meta">{_e(str(head or "-"))} head · score {_e(_fmt(entry.get(keys.NEIGHBOUR_RETRIEVAL_SCORE)))}</span>'
        f'<span class="pred">reader given it alone: <b>{_e(prediction)}</b> '
        f"(p = {_e(_fmt(entry.get(keys.NEIGHBOUR_PROBABILITY)))})</span>"
        f'<span class="caption" title="click to show the whole caption">{_e(text)}</span></figcaption></figure>'
    )


def _provenance(facts: Mapping[str, str] | None) -> str:
    if not facts:
        return ""
    items = "".join(f"<dt>{_e(str(name))}</dt><dd>{_e(str(value))}</dd>" for name, value in facts.items())
    brief = " · ".join(_e(str(facts[k])) for k in ("package", "date") if k in facts)
    return f'<details class="provenance" open><summary>provenance {brief}</summary><dl class="provenance">{items}</dl></details>'


def _figure(image_id: str | None, alt: str, path: Any) -> str:
    return f'<figure class="query-image">{_img(image_id, alt, path)}</figure>'


def _img(image_id: str | None, alt: str, path: Any) -> str:
    if image_id is None:
        return f'<div class="noimage">{_e(alt)}: image unavailable</div>'
    # The script sets src from the page's one table of images, so a repeated image is stored once.
    return f'<img data-img="{image_id}" alt="{_e(alt)}" data-path="{_e(str(path or ""))}">'


def _summary(rows: Sequence[Mapping[str, Any]], labels: Sequence[str] | None, names: Mapping[str, str]) -> str:
    n = len(rows)
    abstained = sum(bool(row.get(keys.ABSTAIN)) for row in rows)
    inconsistent = sum(row.get(keys.CONSISTENT) is False for row in rows)
    scored = [row for row in rows if row.get(ROW_CORRECT) is not None]
    parts = [f"{n} cases", f"{abstained} abstained", f"{inconsistent} with disagreeing neighbours"]
    if scored:
        right = sum(bool(row[ROW_CORRECT]) for row in scored)
        parts.append(f"accuracy {right}/{len(scored)} = {right / len(scored):.3f}")
    if labels:
        parts.append("labels: " + ", ".join(_label(label, names) for label in labels))
    return " · ".join(parts)


def _label(value: Any, names: Mapping[str, str] | None = None) -> str:
    """A label (or label set) by its display name: ``names[label]`` where given, else the label."""
    names = names or {}
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(names.get(str(v), str(v)) for v in value) or "(none)"
    return names.get(str(value), str(value))


def _flag(value: Any) -> str:
    return "" if value is None else ("1" if value else "0")


def _num(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else json.dumps(float(value))


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
