"""The style sheet, script and page template of the evidence viewer (private to evidence_viewer.py).

The script only reads and writes the page itself (and the browser's localStorage, to keep a
reviewer's marks across reloads): no request leaves the page. Exports are built in the page and
handed to the browser as a ``data:`` download link.
"""

from __future__ import annotations

RESEARCH_NOTICE = (
    "Research use only. Not a medical device: these answers are model outputs for review by a qualified "
    "person and must not be used to diagnose or treat patients."
)
"""The notice every viewer carries in its header."""
MIXTURE_NOTE = (
    "No neighbour alone predicted this answer: the answer is the label with the highest probability after "
    "averaging the neighbours' distributions (weighted by retrieval score), so a label that is every "
    "neighbour's close second can outscore labels that each win for only one neighbour."
)
"""Shown on a case whose answer none of its neighbours predicted on its own (support 0)."""

STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{position:sticky;top:0;background:#1d2330;color:#fff;padding:10px 18px;z-index:2}
header h1{font-size:18px;margin:0 0 4px}
header .summary{margin:0 0 6px;color:#c9cfdb}
header .notice{margin:0 0 6px;color:#ffd166;font-weight:600}
header details.provenance{margin:0 0 6px;color:#c9cfdb;font-size:12px}
header details.provenance summary{cursor:pointer}
header dl.provenance{display:grid;grid-template-columns:auto 1fr;gap:0 10px;margin:4px 0}
header dl.provenance dt{color:#8f98aa}header dl.provenance dd{margin:0;word-break:break-all}
.controls label{margin-right:16px}
.controls select,.controls button,.controls input{font:inherit}
#count,#reviewed{color:#c9cfdb;margin-right:10px}
#export-link{color:#9ec5ff;margin-left:6px}
main{padding:12px 18px}
.case{display:flex;gap:16px;background:#fff;border-radius:8px;padding:12px;margin:0 0 12px;box-shadow:0 1px 3px #0002;border-left:6px solid #5b8def}
.case[hidden]{display:none}
.case[data-abstain="1"]{border-left-color:#e0a100}
.case[data-correct="0"]{border-left-color:#d64545}
.case[data-error="1"]{border-left-color:#888}
.query{display:flex;gap:12px;min-width:420px;max-width:480px}
figure{margin:0}
img{display:block;width:150px;height:150px;object-fit:contain;border-radius:4px;background:#000;cursor:zoom-in}
.query-image img{width:180px;height:180px}
.answer h2{font-size:13px;margin:0 0 4px;word-break:break-all}
.answer .label{margin:4px 0}
.answer dl{display:grid;grid-template-columns:auto auto;gap:0 10px;margin:4px 0}
.answer dt{color:#5a6270}.answer dd{margin:0;font-variant-numeric:tabular-nums}
table.dist{border-collapse:collapse;font-size:12px;margin:4px 0}
table.dist td{padding:0 4px}table.dist td.p{text-align:right;font-variant-numeric:tabular-nums}
table.dist tr.chosen{font-weight:700}
table.dist .bar{display:inline-block;height:8px;background:#5b8def;border-radius:2px;vertical-align:middle}
.mixture{font-size:12px;color:#7a5af8;margin:4px 0;max-width:260px}
.question{font-style:italic;margin:0;color:#5a6270}
.error{color:#d64545}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;color:#fff;margin-left:4px}
.badge.abstain{background:#e0a100}.badge.right{background:#2f9e44}.badge.wrong{background:#d64545}.badge.inconsistent{background:#7a5af8}
.review{margin-top:6px;font-size:12px}
.review textarea{display:block;width:240px;height:3em;font:inherit;margin-top:2px}
.case[data-review="agree"] .review{color:#2f9e44}.case[data-review="disagree"] .review{color:#d64545}
.neighbours{display:flex;gap:10px;flex-wrap:wrap;align-items:flex-start}
.neighbour{width:170px;font-size:12px}
.neighbour figcaption span{display:block}
.neighbour .meta{color:#5a6270}
.neighbour[data-agrees="0"] .pred{color:#d64545}
.legend{font-size:12px;color:#c9cfdb;margin-left:12px}
.legend i{display:inline-block;width:10px;height:10px;margin:0 3px 0 8px;vertical-align:middle}
.neighbour .caption{color:#30384a;max-height:4.2em;overflow:hidden;cursor:pointer;position:relative}
.neighbour .caption.expanded{max-height:none}
.neighbour .caption.long:not(.expanded)::after{content:"more";position:absolute;right:0;bottom:0;background:#fff;color:#5b8def;padding-left:4px}
.neighbour[data-head="text"] img{outline:3px solid #7a5af8}
.neighbour[data-head="image"] img{outline:3px solid #5b8def}
.noimage{width:140px;height:100px;display:flex;align-items:center;justify-content:center;background:#e4e6eb;color:#5a6270;font-size:12px;text-align:center;border-radius:4px}
.empty{color:#5a6270}
#zoom{position:fixed;inset:0;background:#000d;display:flex;flex-direction:column;align-items:center;justify-content:center;z-index:5;cursor:zoom-out}
#zoom[hidden]{display:none}
#zoom img{width:auto;height:auto;min-width:min(80vw,80vh);max-width:92vw;max-height:86vh;object-fit:contain;cursor:zoom-out}
#zoom p{color:#fff;font-size:12px;margin:6px}
"""

SCRIPT = """
(function () {
  var images = JSON.parse(document.getElementById("viewer-images").textContent);
  Array.prototype.forEach.call(document.querySelectorAll("img[data-img]"), function (img) {
    img.src = images[img.getAttribute("data-img")];
  });
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
    error: function (c) { return c.dataset.error === "1"; },
    unreviewed: function (c) { return !c.dataset.review; }
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

  // Captions: a click shows the whole text ("more" marks the ones cut off).
  Array.prototype.forEach.call(container.querySelectorAll(".caption"), function (c) {
    if (c.scrollHeight > c.clientHeight + 1) { c.classList.add("long"); }
  });
  container.addEventListener("click", function (event) {
    var caption = event.target.closest(".caption");
    if (caption) { caption.classList.toggle("expanded"); }
  });

  // Zoom: a click on any image shows it large; a click or Escape closes it.
  var zoom = document.getElementById("zoom");
  var zoomImg = zoom.querySelector("img");
  var zoomText = zoom.querySelector("p");
  container.addEventListener("click", function (event) {
    var img = event.target.closest("img");
    if (!img) { return; }
    zoomImg.src = img.src;
    zoomText.textContent = img.alt + (img.dataset.path ? " - " + img.dataset.path : "");
    zoom.hidden = false;
  });
  zoom.addEventListener("click", function () { zoom.hidden = true; });
  document.addEventListener("keydown", function (event) { if (event.key === "Escape") { zoom.hidden = true; } });

  // Review: agree / disagree and a note per case, kept in localStorage, exported as CSV or JSON.
  var storeKey = "lvlm-retriever-review:" + document.body.dataset.pageId;
  var reviewer = document.getElementById("reviewer");
  var reviewed = document.getElementById("reviewed");
  function load() { try { return JSON.parse(localStorage.getItem(storeKey) || "{}"); } catch (e) { return {}; } }
  var marks = load();
  function save() { try { localStorage.setItem(storeKey, JSON.stringify(marks)); } catch (e) { /* storage off */ } }
  function show(card) {
    var mark = marks[card.dataset.caseId] || {};
    card.dataset.review = mark.decision || "";
    Array.prototype.forEach.call(card.querySelectorAll(".review input[type=radio]"), function (r) { r.checked = r.value === mark.decision; });
    card.querySelector(".review textarea").value = mark.note || "";
  }
  function tally() {
    var n = cards.filter(function (c) { return c.dataset.review; }).length;
    reviewed.textContent = "reviewed " + n + " of " + cards.length;
  }
  cards.forEach(function (card) {
    show(card);
    card.querySelector(".review").addEventListener("input", function (event) {
      var mark = marks[card.dataset.caseId] || {};
      if (event.target.type === "radio") { mark.decision = event.target.value; }
      if (event.target.tagName === "TEXTAREA") { mark.note = event.target.value; }
      mark.time = new Date().toISOString();
      marks[card.dataset.caseId] = mark;
      card.dataset.review = mark.decision || "";
      save();
      tally();
    });
  });
  tally();
  function records() {
    return cards.slice().sort(index).map(function (c) {
      var mark = marks[c.dataset.caseId] || {};
      return {case_id: c.dataset.caseId, answer: c.dataset.answer || "", gold: c.dataset.gold || "",
              decision: mark.decision || "", note: mark.note || "", reviewer: reviewer.value,
              reviewed_at: mark.time || "", page: document.title};
    });
  }
  function csvCell(value) {
    var text = String(value);
    return /[",\\n\\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }
  var link = document.getElementById("export-link");
  function exportAs(kind) {
    var rows = records();
    var text;
    if (kind === "json") {
      text = JSON.stringify(rows, null, 1);
    } else {
      var columns = Object.keys(rows[0] || {case_id: ""});
      text = [columns.join(",")].concat(rows.map(function (r) { return columns.map(function (k) { return csvCell(r[k]); }).join(","); })).join("\\r\\n") + "\\r\\n";
    }
    link.href = "data:" + (kind === "json" ? "application/json" : "text/csv") + ";charset=utf-8," + encodeURIComponent(text);
    link.download = "review_" + document.body.dataset.pageId + "." + kind;
    link.textContent = "download " + kind.toUpperCase() + " again";
    link.hidden = false;
    link.click();
  }
  document.getElementById("export-csv").addEventListener("click", function () { exportAs("csv"); });
  document.getElementById("export-json").addEventListener("click", function () { exportAs("json"); });
  apply();
})();
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="llama-index-lvlm-retriever">
<title>{title}</title>
<style>{style}</style>
</head>
<body data-page-id="{page_id}">
<header>
<h1>{title}</h1>
<p class="notice">{notice}</p>
<p class="summary">{summary}</p>
{provenance}
<div class="controls">
<label>Show <select id="filter">
<option value="all">all cases</option>
<option value="abstain">abstained</option>
<option value="answered">answered (not abstained)</option>
<option value="correct"{gold_disabled}>correct</option>
<option value="wrong"{gold_disabled}>wrong</option>
<option value="inconsistent">neighbours disagree</option>
<option value="error">errors</option>
<option value="unreviewed">not yet reviewed</option>
</select></label>
<label>Sort by <select id="sort">
<option value="input">input order</option>
<option value="probability-asc">probability, lowest first</option>
<option value="probability-desc">probability, highest first</option>
<option value="support-asc">support, lowest first</option>
<option value="support-desc">support, highest first</option>
</select></label>
<span id="count"></span>
<span id="reviewed"></span>
<label>Reviewer <input id="reviewer" size="10" placeholder="initials"></label>
<button id="export-csv" type="button">Export review CSV</button>
<button id="export-json" type="button">Export review JSON</button>
<a id="export-link" hidden></a>
<span class="legend">frame: <i style="background:#5b8def"></i>image head <i style="background:#7a5af8"></i>text head; a red prediction disagrees with the answer; click an image to zoom, a caption to expand</span>
</div>
</header>
<main id="cases">
{cards}
</main>
<div id="zoom" hidden><img alt="zoomed image"><p></p></div>
<script type="application/json" id="viewer-images">{images}</script>
<script>{script}</script>
</body>
</html>
"""
