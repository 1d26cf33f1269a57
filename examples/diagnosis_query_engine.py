"""Diagnose an image with LVLMDiagnosisQueryEngine, fully offline with tiny random models.

Run: ``python examples/diagnosis_query_engine.py`` after installing the package (``pip install .``
from a checkout; no extra is needed). It builds a tiny CLIP encoder and a tiny LLaVA reader from
configs (random weights, so the *answer* is meaningless; the pipeline is real), makes a knowledge
base of generated fundus-like pictures (an orange disc with vessels, exudates and haemorrhages by
grade), asks about another one and prints the answer, its probability, the neighbours' support and
consistency and the evidence.

With real checkpoints, replace the two builders (they download weights once):

    from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
    from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader

    embed_model = CLIPEmbedding.from_pretrained("openai/clip-vit-base-patch16", device="cuda")
    reader = HFLVLMReader.from_pretrained("Qwen/Qwen2-VL-2B-Instruct", get_task("retinamnist"),
                                          device="cuda", dtype="bfloat16")

and load trained query heads with ``QueryHead.from_pretrained(dir)`` for ``image_head=`` /
``text_head=`` (without them the retriever is standard RAG).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from llama_index.core.schema import QueryBundle
from PIL import Image

from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.evaluation.consistency_evaluator import ConsistencyEvaluator
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.outputs import metadata_keys as keys
from llama_index_lvlm_retriever.query_engine import LVLMDiagnosisQueryEngine
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.tasks import get_task
from llama_index_lvlm_retriever.testing import build_tiny_clip, build_tiny_llava

logger = logging.getLogger(__name__)

# Made-up captions of four knowledge-base pictures, with the grade each picture is drawn at.
_PAIRS = {
    "grade-0": (0, "Healthy-looking fundus; no haemorrhages or exudates, grade 0."),
    "grade-1": (1, "A few microaneurysms near the vessel arcade, grade 1."),
    "grade-2": (2, "Hard exudates around the macula, grade 2."),
    "grade-3": (3, "Blot haemorrhages in all quadrants, grade 3."),
}
_SIDE = 96


def fundus(grade: int, seed: int) -> Image.Image:
    """A fundus-like RGB picture: orange disc, dark vessels, and ``grade`` x 4 lesions (dots)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:_SIDE, 0:_SIDE] / _SIDE  # (side, side) each, in [0, 1)
    disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.22
    img = np.zeros((_SIDE, _SIDE, 3))
    img[disc] = (200, 90, 40)
    for _ in range(4):  # vessels: dark sinusoids leaving the optic disc
        phase, slope = rng.uniform(0, 6), rng.uniform(-1.5, 1.5)
        vessel = np.abs(yy - 0.5 - slope * (xx - 0.3) - 0.03 * np.sin(12 * xx + phase)) < 0.012
        img[vessel & disc] = (120, 30, 20)
    for _ in range(4 * grade):  # lesions: yellow exudates or dark-red haemorrhages
        cy, cx = rng.uniform(0.25, 0.75, size=2)
        spot = ((yy - cy) ** 2 + (xx - cx) ** 2) < rng.uniform(2e-4, 8e-4)
        img[spot & disc] = (240, 220, 90) if rng.random() < 0.5 else (90, 10, 10)
    return Image.fromarray(img.astype(np.uint8))


def main(work_dir: Path) -> None:
    """Build the tiny models and the knowledge base under ``work_dir``, then answer one query."""
    items = []
    for seed, (item_id, (grade, caption)) in enumerate(_PAIRS.items()):
        path = work_dir / f"{item_id}.png"
        fundus(grade, seed).save(path)
        items.append(KBItem(id=item_id, image_path=str(path), text=caption, source="generated"))
    query = work_dir / "query.png"
    fundus(2, seed=99).save(query)

    # Real use: CLIPEmbedding.from_pretrained("openai/clip-vit-base-patch16").
    embed_model = CLIPEmbedding.from_pretrained(build_tiny_clip(work_dir / "clip"))
    kb = KnowledgeBase.build(items, embed_model, show_progress=False)
    # Real use: HFLVLMReader.from_pretrained("Qwen/Qwen2-VL-2B-Instruct", get_task("retinamnist")).
    reader = HFLVLMReader.from_pretrained(build_tiny_llava(work_dir / "llava"), get_task("retinamnist"))

    engine = LVLMDiagnosisQueryEngine.from_defaults(
        knowledge_base=kb, reader=reader, k_image=2, k_text=2, top_n=3, min_support=0.5
    )
    response = engine.query(QueryBundle(query_str="", image_path=str(query)))
    meta = response.metadata

    logger.info("answer: %s", response.response)
    logger.info(
        "label %s, probability %.3f, support %.2f, abstain %s",
        meta[keys.ANSWER], meta[keys.PROBABILITY], meta[keys.SUPPORT], meta[keys.ABSTAIN],
    )
    for neighbour in meta[keys.NEIGHBOURS]:
        logger.info(
            "  neighbour %-10s -> grade %s (p=%.2f)",
            neighbour[keys.NEIGHBOUR_KB_ID], neighbour[keys.NEIGHBOUR_PREDICTION], neighbour[keys.NEIGHBOUR_PROBABILITY],
        )
    for node in response.source_nodes:
        logger.info("  evidence %-10s score %.3f  %s", node.node.node_id, node.score, node.node.get_content())
    result = ConsistencyEvaluator().evaluate_response(response=response)
    logger.info("consistency: score %.2f, passing %s; %s", result.score, result.passing, result.feedback)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
