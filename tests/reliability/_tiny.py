"""Tiny stores for the reliability tests: a tiny CLIP, generated images, two distinguishable KB versions.

Also a script: ``python _tiny.py repersist <kb_dir> <ref_dir> <clip_dir> <images_dir> <n> <pause_s>``
persists its two versions once to ``<ref_dir>/a`` and ``<ref_dir>/b`` (the exact bits it will write, for
the reader to compare with), then to ``kb_dir``, prints ``ready`` and re-persists them alternately ``n``
times (the concurrent writer of test_concurrent_loads).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.kb import KnowledgeBase

N_ITEMS = 6
VERSIONS = ("a", "b")


def write_images(folder: Path, n: int = 2 * N_ITEMS) -> list[Path]:
    """``n`` small distinct RGB images (seeded noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        if not path.exists():
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def items(version: str, images: list[Path]) -> list[KBItem]:
    """Version ``a`` uses the first half of the images, ``b`` the second: ids, texts and vectors all differ."""
    offset = 0 if version == "a" else N_ITEMS
    return [
        KBItem(id=f"{version}{i}", image_path=str(images[offset + i]), text=f"finding {version} number {i}", source=version)
        for i in range(N_ITEMS)
    ]


def build(version: str, embed: CLIPEmbedding, images: list[Path]) -> KnowledgeBase:
    return KnowledgeBase.build(items(version, images), embed, show_progress=False)


def check_one_version(kb: KnowledgeBase, expected: dict[str, KnowledgeBase], *, atol: float = 0.0) -> str:
    """Which version ``kb`` is; raises AssertionError when it mixes two (items of one, vectors of another).

    Vectors are compared exactly unless ``atol`` is given: a writer that embeds the version itself in
    another (e.g. forked) process may differ from ``expected`` in the last float bits, while the two
    versions' vectors differ by far more (other images), so a small tolerance still tells them apart.
    """
    versions = {item.source for item in kb.items}
    assert len(versions) == 1, f"items of several versions: {sorted(versions)}"
    (version,) = versions
    ref = expected[version]
    assert kb.items == ref.items
    np.testing.assert_allclose(kb.image_vectors, ref.image_vectors, rtol=0, atol=atol)
    np.testing.assert_allclose(kb.text_vectors, ref.text_vectors, rtol=0, atol=atol)
    hits = kb.search(ref.image_vectors[:1], "image", 2)  # the index answers with this version's ids
    assert hits[0][0].item.id == ref.items[0].id
    return version


def _repersist(kb_dir: str, ref_dir: str, clip_dir: str, images_dir: str, n: str, pause: str) -> None:
    embed = CLIPEmbedding.from_pretrained(clip_dir)
    images = write_images(Path(images_dir))
    kbs = [build(v, embed, images) for v in VERSIONS]
    # The reader compares each load with these copies, not with vectors it embeds itself: the same
    # model in another process may differ in the last float bits (1.2e-7 seen on a loaded machine).
    for version, kb in zip(VERSIONS, kbs, strict=True):
        kb.persist(Path(ref_dir) / version)
    kbs[0].persist(kb_dir)  # from here on every version in kb_dir is one this process wrote
    print("ready", flush=True)
    for i in range(int(n)):
        kbs[i % 2].persist(kb_dir)
        time.sleep(float(pause))


if __name__ == "__main__":
    if sys.argv[1] == "repersist":
        _repersist(*sys.argv[2:8])
