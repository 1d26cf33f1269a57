"""``demo``: an offline end-to-end run on real solar-cell images (interim demo).

Builds a small knowledge base from the ELPV electroluminescence images (shipped inside the
``elpv-dataset`` package, so nothing is downloaded), embeds it with a tiny *random* CLIP (no
weights can be downloaded offline), persists it, and retrieves neighbours for three held-out
images. It exercises the whole pipeline (image files -> encoder -> faiss indexes -> persisted KB ->
``LVLMAwareRetriever``); with a random encoder the neighbours are not meaningful yet.
"""

from __future__ import annotations

import argparse
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llama_index_lvlm_retriever.cli._common import CLIError
from llama_index_lvlm_retriever.data.records import KBItem

logger = logging.getLogger(__name__)

N_QUERIES = 3
_CELL_TYPES = {"mono": "monocrystalline", "poly": "polycrystalline"}


@dataclass(frozen=True)
class ELPVCell:
    """One ELPV image with its expert annotation."""

    index: int
    pixels: np.ndarray  # (300, 300) uint8
    defect_probability: float
    cell_type: str

    @property
    def caption(self) -> str:
        """An honest caption built from the metadata only."""
        kind = _CELL_TYPES.get(self.cell_type, self.cell_type)
        return (
            f"Electroluminescence image of a {kind} solar cell; "
            f"expert defect probability {self.defect_probability:.2f}."
        )

    @property
    def label(self) -> str:
        """The defect probability as a class name (the dataset's four levels)."""
        return f"defect_p={self.defect_probability:.2f}"


def register(subparsers: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    """Add the ``demo`` subcommand; returns name -> parser."""
    demo = subparsers.add_parser(
        "demo",
        help="offline end-to-end demo on real solar-cell EL images (random tiny encoder)",
        description="Write ELPV solar-cell images as PNGs, build and persist a knowledge base with a "
        "tiny random CLIP (no weights are downloaded), and retrieve neighbours for held-out images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--out", default="demo_output", help="output folder (images/, queries/, tiny_clip/, kb/)")
    demo.add_argument("--n-items", type=int, default=200, help="knowledge-base size (images drawn from the 2624 of ELPV)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the image draw and of the tiny encoder's weights")
    demo.add_argument("--top-k", type=int, default=2, help="neighbours per head for each query")
    demo.set_defaults(handler=_demo)
    return {"demo": demo}


@functools.lru_cache(maxsize=1)
def load_elpv_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ELPV images ``(2624, 300, 300)`` uint8, defect probabilities and cell types (cached).

    Raises:
        ImportError: ``elpv-dataset`` is not installed (it is in the ``test`` extra).
    """
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError as err:
        raise ImportError("the demo needs the elpv-dataset package: pip install elpv-dataset") from err
    images, probabilities, types = load_dataset()
    return np.asarray(images), np.asarray(probabilities, dtype=np.float64), np.asarray(types)


def load_elpv_cells(n: int, seed: int) -> list[ELPVCell]:
    """Draw ``n`` distinct ELPV images, uniformly without replacement.

    Raises:
        CLIError: ``n`` is out of range.
        ImportError: ``elpv-dataset`` is not installed.
    """
    images, probabilities, types = load_elpv_arrays()
    if not 1 <= n <= len(images):
        raise CLIError(
            f"the demo needs {n} ELPV images (--n-items + {N_QUERIES} held-out queries) but the "
            f"dataset has {len(images)}; lower --n-items"
        )
    chosen = np.random.default_rng(seed).choice(len(images), size=n, replace=False)
    return [ELPVCell(int(i), images[i], float(probabilities[i]), str(types[i])) for i in chosen]


def write_cells(cells: list[ELPVCell], folder: Path, prefix: str) -> list[KBItem]:
    """Save the cells as PNGs in ``folder`` and return them as KB items."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for cell in cells:
        path = folder / f"{prefix}{cell.index:04d}.png"
        Image.fromarray(cell.pixels).save(path)
        items.append(
            KBItem(
                id=f"{prefix}{cell.index:04d}",
                image_path=str(path),
                text=cell.caption,
                source="elpv",
                label=cell.label,
                metadata={"elpv_index": cell.index, "cell_type": cell.cell_type},
            )
        )
    return items


def _demo(args: argparse.Namespace) -> int:
    from llama_index.core.schema import QueryBundle

    from llama_index_lvlm_retriever.cli.kb import format_table, node_summary
    from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
    from llama_index_lvlm_retriever.knowledge_base import KnowledgeBase
    from llama_index_lvlm_retriever.retriever import META_LABEL, LVLMAwareRetriever
    from llama_index_lvlm_retriever.testing import build_tiny_clip

    if args.n_items < 1:
        raise CLIError(f"--n-items must be >= 1, got {args.n_items}")
    if args.top_k < 1:
        raise CLIError(f"--top-k must be >= 1, got {args.top_k}")
    out = Path(args.out)
    start = time.perf_counter()
    cells = load_elpv_cells(args.n_items + N_QUERIES, args.seed)
    kb_items = write_cells(cells[: args.n_items], out / "images", "elpv-")
    queries = write_cells(cells[args.n_items :], out / "queries", "query-")
    prepared = time.perf_counter()

    print(
        "NOTE: the encoder is a tiny CLIP with RANDOM weights (no weights can be downloaded "
        "offline), so the neighbours below are not meaningful yet; the demo shows the pipeline."
    )
    clip_dir = build_tiny_clip(out / "tiny_clip", seed=args.seed)
    embed = CLIPEmbedding.from_pretrained(clip_dir, embed_batch_size=64)
    kb = KnowledgeBase.build(kb_items, embed, batch_size=64, show_progress=True)
    kb.persist(out / "kb")
    built = time.perf_counter()
    print(f"knowledge base: {len(kb)} ELPV images ({kb.dim}-d) persisted to {out / 'kb'}")

    retriever = LVLMAwareRetriever.from_persist_dir(out / "kb", embed, k_image=args.top_k, k_text=args.top_k)
    query_seconds = []
    for query in queries:
        t0 = time.perf_counter()
        nodes = retriever.retrieve(QueryBundle(query_str="", image_path=query.image_path))
        query_seconds.append(time.perf_counter() - t0)
        print(f"\nquery {query.id} ({query.text})")
        rows = [{**node_summary(n), "label": n.node.metadata.get(META_LABEL, "")} for n in nodes]
        print(format_table(rows, ["rank", "id", "head", "score", "label", "text"], width=90))
    print(
        f"\ntiming: load ELPV + write PNGs {prepared - start:.1f} s, encoder + KB build + persist {built - prepared:.1f} s, "
        f"query mean {1000 * float(np.mean(query_seconds)):.1f} ms (embedding included)"
    )
    return 0
