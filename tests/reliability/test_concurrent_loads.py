"""Loads racing re-persists (issue 12): every load sees exactly one complete version, none fails.

A writer subprocess re-persists two distinguishable versions of a tiny KB alternately while this
process loads it in a loop; each load must be exactly version ``a`` or ``b`` (items, both vector
matrices and the faiss index agree). The reference versions are the writer's own (it persists a copy
of each before racing), so the exact comparison never depends on two processes embedding alike. ``make test`` runs the issue's full count: 10,000 loads during
100 re-persists (about 25 s on 2 cores).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import _tiny

from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.kb import KnowledgeBase

LOADS = 10_000
PERSISTS = 100


def run_race(
    kb_dir: Path, clip_dir: Path, images: list[Path], embed: CLIPEmbedding, *, loads: int, persists: int
) -> dict[str, int]:
    """Load ``kb_dir`` at least ``loads`` times while a subprocess re-persists it ``persists`` times."""
    _tiny.build("a", embed, images).persist(kb_dir)  # only to time a load; the writer replaces it
    t0 = time.perf_counter()
    for _ in range(20):
        KnowledgeBase.from_persist_dir(kb_dir, embed)
    per_load = (time.perf_counter() - t0) / 20
    # Spread the persists over the time the loads take, so that every stretch of loads races a write.
    pause = max(0.0, loads * per_load / persists - 0.01)
    script = Path(_tiny.__file__)
    ref_dir = kb_dir.parent / f"{kb_dir.name}-writer-refs"
    writer = subprocess.Popen(
        [
            sys.executable, str(script), "repersist", str(kb_dir), str(ref_dir), str(clip_dir),
            str(images[0].parent), str(persists), str(pause),
        ],
        stdout=subprocess.PIPE, text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    expected = {v: KnowledgeBase.from_persist_dir(ref_dir / v, embed) for v in _tiny.VERSIONS}
    counts = {"a": 0, "b": 0, "failed": 0, "loads": 0}
    errors: list[str] = []
    while counts["loads"] < loads or writer.poll() is None:
        try:
            kb = KnowledgeBase.from_persist_dir(kb_dir, embed)
            counts[_tiny.check_one_version(kb, expected)] += 1
        except Exception as err:  # noqa: BLE001 - every failure kind is counted and reported
            counts["failed"] += 1
            errors.append(f"{type(err).__name__}: {err}")
        counts["loads"] += 1
    assert writer.wait() == 0
    assert not errors, f"{len(errors)} failed or mixed loads, first: {errors[:3]}"
    return counts


def test_loads_during_repersists_never_mix_or_fail(clip_dir: Path, images: list[Path], embed: CLIPEmbedding, tmp_path: Path) -> None:
    counts = run_race(tmp_path / "kb", clip_dir, images, embed, loads=LOADS, persists=PERSISTS)
    assert counts["failed"] == 0 and counts["loads"] >= LOADS
    assert counts["a"] > 0 and counts["b"] > 0, counts  # both versions were really seen: the race happened
    assert sorted(p.name for p in (tmp_path / "kb").iterdir())[-1] == "vectors." + (
        KnowledgeBase.read_manifest(tmp_path / "kb")["files"]["vectors"]["name"].split(".")[1]
    ) + ".safetensors"  # old versions' files are gone: 3 data files (a flat index has none) + the manifest
    assert len(list((tmp_path / "kb").iterdir())) == 4
