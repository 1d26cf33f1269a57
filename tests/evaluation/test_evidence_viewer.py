"""The evidence viewer: static structure, then the page in a real headless Chromium.

The browser tests need a Chromium binary (Debian: ``apt-get install chromium``; ``make test``
installs it where it can) and skip, saying so, where none is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from llama_index_lvlm_retriever.evaluation.evidence_viewer import write_evidence_viewer

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_BROWSER_TIMEOUT_S = 90


def _image(path: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
    return str(path)


def _rows(folder: Path) -> list[dict[str, Any]]:
    """Five cases: 0 right, 1 wrong + abstain, 2 right + abstain + inconsistent, 3 unlabelled, 4 an error."""
    kb = [_image(folder / f"kb{i}.png", 100 + i) for i in range(2)]

    def neighbours(*predictions: str) -> list[dict[str, Any]]:
        return [
            {"kb_id": f"kb{j}", "head": ("image", "text")[j % 2], "retrieval_score": 0.9 - 0.1 * j, "prediction": p,
             "probability": 0.8, "image_path": kb[j % 2], "text": f"caption <{j}> & more"}
            for j, p in enumerate(predictions)
        ]

    base = {"question": "", "weighted_support": 0.5, "error": None}
    return [
        {**base, "case_id": "c0", "image_path": _image(folder / "q0.png", 0), "answer": "yes", "probability": 0.9,
         "support": 1.0, "consistent": True, "abstain": False, "gold": ["yes"], "correct": True,
         "neighbours": neighbours("yes", "yes")},
        {**base, "case_id": "c1", "image_path": _image(folder / "q1.png", 1), "answer": "no", "probability": 0.6,
         "support": 0.5, "consistent": False, "abstain": True, "gold": ["yes"], "correct": False,
         "neighbours": neighbours("no", "yes")},
        {**base, "case_id": "c2", "image_path": _image(folder / "q2.png", 2), "answer": "yes", "probability": 0.7,
         "support": 0.5, "consistent": False, "abstain": True, "gold": ["yes"], "correct": True,
         "neighbours": neighbours("yes", "no")},
        {**base, "case_id": "c3 <unlabelled>", "image_path": _image(folder / "q3.png", 3), "answer": "no",
         "probability": 0.95, "support": 1.0, "consistent": True, "abstain": False, "gold": None,
         "correct": None, "neighbours": neighbours("no", "no")},
        {**base, "case_id": "c4", "image_path": str(folder / "missing.png"), "answer": None, "probability": None,
         "support": None, "weighted_support": None, "consistent": None, "abstain": True, "gold": None,
         "correct": None, "error": "unreadable image: missing.png", "neighbours": []},
    ]


@pytest.fixture()
def page(tmp_path: Path) -> Path:
    return write_evidence_viewer(_rows(tmp_path), tmp_path / "view" / "evidence.html", labels=["yes", "no"], images="embed")


def test_static_structure(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert text.count('<article class="case"') == 5
    assert text.count('<figure class="neighbour"') == 8
    assert text.count("data:image/png;base64,") == 4 + 8  # the missing query image shows a placeholder
    assert "image unavailable" in text and "unreadable image: missing.png" in text
    # Self-contained: no external script, style sheet, font or image.
    assert not re.search(r'(src|href)="(https?:)?//', text) and "@import" not in text
    # Escaped user text; the gold-based filters are enabled because some cases have gold.
    assert "caption &lt;0&gt; &amp; more" in text and "c3 &lt;unlabelled&gt;" in text
    assert 'value="correct" disabled' not in text
    assert "5 cases · 3 abstained · 2 with disagreeing neighbours · accuracy 2/3 = 0.667" in text


def test_copy_mode_and_bad_settings(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    for row in rows:
        row["correct"] = None
    page = write_evidence_viewer(rows, tmp_path / "out" / "view.html", images="copy", max_side=32)
    text = page.read_text()
    assert "data:image" not in text and text.count('src="view_files/') == 12
    assert len(list((tmp_path / "out" / "view_files").glob("*.png"))) == 6  # 4 queries + 2 KB images, once each
    assert 'value="correct" disabled' in text  # no gold: correctness filters are off
    with pytest.raises(ValueError, match="images must be 'auto', 'embed' or 'copy', got 'inline'"):
        write_evidence_viewer(rows, tmp_path / "x.html", images="inline")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_side must be >= 16 pixels, got 8"):
        write_evidence_viewer(rows, tmp_path / "x.html", max_side=8)


def _browser() -> str:
    for name in _BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no Chromium/Chrome binary on PATH (looked for " + ", ".join(_BROWSERS) + "); install one "
        "(Debian: apt-get install chromium, or run `make test` as root) to run the browser test"
    )


def _run_browser(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [browser, "--headless", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={profile}", *args]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root
    result = subprocess.run(command, capture_output=True, text=True, timeout=_BROWSER_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _visible_cards(dom: str) -> list[str]:
    cards = re.findall(r"<article ([^>]*)>", dom)
    shown = [c for c in cards if not re.search(r'(^|\s)hidden(=""|\s|$)', c)]
    return [re.search(r'id="(case-\d+)"', c).group(1) for c in shown]  # type: ignore[union-attr]


def test_in_a_headless_browser(page: Path, tmp_path: Path) -> None:
    browser = _browser()
    url = page.resolve().as_uri()
    # The script ran: all five cards shown and counted, in input order.
    dom = _run_browser(browser, tmp_path / "profile", "--dump-dom", url).stdout
    assert dom.count("<article") == 5 and _visible_cards(dom) == [f"case-{i}" for i in range(5)]
    assert "showing 5 of 5" in dom
    # The filter and sort read the URL fragment on load.
    dom = _run_browser(browser, tmp_path / "profile", "--dump-dom", url + "#filter=abstain&sort=probability-desc").stdout
    assert _visible_cards(dom) == ["case-2", "case-1", "case-4"] and "showing 3 of 5" in dom
    dom = _run_browser(browser, tmp_path / "profile", "--dump-dom", url + "#filter=wrong").stdout
    assert _visible_cards(dom) == ["case-1"]
    # A scripted change of the select, as a click would do it.
    clicked = page.with_name("clicked.html")
    script = ('<script>var f=document.getElementById("filter");f.value="inconsistent";'
              'f.dispatchEvent(new Event("change"));</script></body>')
    clicked.write_text(page.read_text().replace("</body>", script))
    dom = _run_browser(browser, tmp_path / "profile", "--dump-dom", clicked.resolve().as_uri()).stdout
    assert _visible_cards(dom) == ["case-1", "case-2"] and "showing 2 of 5" in dom and 'data-filter="inconsistent"' in dom
    # And a screenshot.
    shot = tmp_path / "evidence.png"
    _run_browser(browser, tmp_path / "profile", "--window-size=1280,900", f"--screenshot={shot}", url)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as img:
        assert img.size == (1280, 900)
        assert len(np.unique(np.asarray(img.convert("L")))) > 20  # rendered content, not a blank page
