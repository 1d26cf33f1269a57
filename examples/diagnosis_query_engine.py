"""Diagnose an image with LVLMDiagnosisQueryEngine, fully offline with tiny random models.

Run: ``python examples/diagnosis_query_engine.py``. It builds a tiny CLIP encoder and a tiny LLaVA
reader from configs (random weights, so the *answer* is meaningless; the pipeline is real), makes a
knowledge base of retina crops from ``skimage.data.retina()``, asks a question about another crop
and prints the answer, its probability, the neighbours' consistency and the evidence.

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

from llama_index.core.schema import QueryBundle
from PIL import Image
from skimage import data as skdata

from llama_index_lvlm_retriever import metadata_keys as keys
from llama_index_lvlm_retriever.data.records import KBItem
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.evaluation.consistency_evaluator import ConsistencyEvaluator
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.query_engine import LVLMDiagnosisQueryEngine
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.tasks import get_task
from llama_index_lvlm_retriever.testing import build_tiny_clip, build_tiny_llava

logger = logging.getLogger(__name__)

# (row, column) of 160-pixel crops of the skimage retina photograph, with made-up captions.
_CROPS = {
    "optic-disc": ((250, 100), "Optic disc region; no haemorrhages, grade 0."),
    "vessels": ((100, 350), "Vessel arcade with a few microaneurysms, grade 1."),
    "macula": ((400, 450), "Macular region with hard exudates, grade 2."),
    "periphery": ((600, 200), "Peripheral retina with blot haemorrhages, grade 3."),
}


def main(work_dir: Path) -> None:
    """Build the tiny models and the knowledge base under ``work_dir``, then answer one query."""
    retina = skdata.retina()
    items = []
    for item_id, ((row, col), caption) in _CROPS.items():
        path = work_dir / f"{item_id}.png"
        Image.fromarray(retina[row : row + 160, col : col + 160]).save(path)
        items.append(KBItem(id=item_id, image_path=str(path), text=caption, source="skimage"))
    query = work_dir / "query.png"
    Image.fromarray(retina[300:460, 300:460]).save(query)

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
    logger.info("label %s, probability %.3f, abstain %s", meta[keys.LABEL], meta[keys.LABEL_PROBABILITY], meta[keys.ABSTAIN])
    for neighbour in meta[keys.NEIGHBOUR_PREDICTIONS]:
        logger.info(
            "  neighbour %-10s -> grade %s (p=%.2f)",
            neighbour[keys.NEIGHBOUR_KB_ID], neighbour[keys.NEIGHBOUR_LABEL], neighbour[keys.NEIGHBOUR_PROBABILITY],
        )
    for node in response.source_nodes:
        logger.info("  evidence %-10s score %.3f  %s", node.node.node_id, node.score, node.node.get_content())
    result = ConsistencyEvaluator().evaluate_response(response=response)
    logger.info("consistency: score %.2f, passing %s; %s", result.score, result.passing, result.feedback)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))
