"""Retriever-training speed: reader-feedback collection and adapter / encoder fine-tuning.

Three measurements on tiny offline models (random weights; nothing downloads):

* **feedback collection**: ``collect_feedback`` for ``--feedback-cases`` cases with
  ``--n-candidates`` candidates per head (image + text) from a KB of ``--kb-items`` pairs, scored by
  a tiny LLaVA through ``HFLVLMReader`` (the reader dominates: up to 2N pairs per case);
* **adapter epoch**: ``RetrieverFinetuneEngine`` in ``"adapter"`` mode on a synthetic feedback
  cache of ``--cases`` cases x ``--n-candidates`` candidates per head at ``--dim`` dimensions
  (both heads, MLP heads, top-20 of the pool re-drawn every 10 steps, batch 256, validation at the
  start and the end), one pass over the training cases; plus the paper's full 300 steps;
* **encoder steps**: the same engine in ``"encoder"`` mode (a trainable copy of the tiny CLIP image
  tower) on the collected feedback, per optimiser step;
* **real-retrieval validation**: one validation step of the engine with the reader
  (``RetrievalValidator``: whole-KB search, top-2 per head, reader scores through the cache, fusion)
  over the feedback cases, as a ratio to the feedback-collection pass over the same cases: *cold*
  (cases without a cached pool, so all 4 neighbours per case go to the reader) and *warm* (every
  pair already scored, the usual case from the second validation on).

Prints a Markdown table. Run::

    python benchmarks/training.py              # about a minute on 2 CPU cores
    python benchmarks/training.py --threads 1 --cases 10000
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.embeddings import MultiModalEmbedding
from PIL import Image

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.embeddings import CLIPEmbedding
from llama_index_lvlm_retriever.kb import KnowledgeBase
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.retriever import LVLMAwareRetriever
from llama_index_lvlm_retriever.tasks import get_task
from llama_index_lvlm_retriever.testing import build_tiny_llava
from llama_index_lvlm_retriever.testing.clip import build_tiny_clip
from llama_index_lvlm_retriever.training._identity import retriever_identity
from llama_index_lvlm_retriever.training.config import FeedbackConfig, TrainerConfig
from llama_index_lvlm_retriever.training.feedback import collect_feedback
from llama_index_lvlm_retriever.training.feedback_cache import FeedbackCache, _HeadArrays
from llama_index_lvlm_retriever.training.trainer import RetrieverFinetuneEngine
from llama_index_lvlm_retriever.training.validation import RetrievalValidator

TASK = get_task("retinamnist")


class _VectorsOnlyEmbedding(MultiModalEmbedding):
    """Stands in for the encoder of a synthetic KB: adapter training never embeds anything."""

    model_name: str = "synthetic-vectors"
    _dim: int = PrivateAttr()

    @classmethod
    def class_name(cls) -> str:
        return "VectorsOnlyEmbedding"

    def _fail(self, *_: Any) -> list[float]:
        raise NotImplementedError("the synthetic benchmark KB has precomputed vectors only")

    _get_image_embedding = _get_text_embedding = _get_query_embedding = _fail

    async def _aget_image_embedding(self, *_: Any) -> list[float]:
        return self._fail()

    async def _aget_query_embedding(self, *_: Any) -> list[float]:
        return self._fail()


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    work = parser.add_argument_group("workload")
    work.add_argument("--feedback-cases", type=int, default=20, help="cases for feedback collection (default: 20)")
    work.add_argument("--kb-items", type=int, default=200, help="KB pairs for feedback collection (default: 200)")
    work.add_argument("--n-candidates", type=int, default=50, help="candidates per case and head (default: 50)")
    work.add_argument("--cases", type=int, default=1000, help="cases of the synthetic adapter cache (default: 1000)")
    work.add_argument("--dim", type=int, default=512, help="embedding dim of the synthetic cache (default: 512)")
    work.add_argument("--synthetic-kb", type=int, default=20000, help="KB rows of the synthetic cache (default: 20000)")
    run = parser.add_argument_group("run")
    run.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    run.add_argument("--encoder-steps", type=int, default=20, help="timed encoder-mode steps (default: 20)")
    return parser.parse_args(argv)


def _image(path: Path, rng: np.random.Generator) -> str:
    Image.fromarray(rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)).save(path)
    return str(path)


def _time_feedback(folder: Path, args: argparse.Namespace) -> tuple[float, FeedbackCache, LVLMAwareRetriever,
                                                                   list[Case], HFLVLMReader]:
    rng = np.random.default_rng(0)
    embed = CLIPEmbedding.from_pretrained(str(build_tiny_clip(folder / "clip")))
    labels = list(TASK.labels)
    items = [
        KBItem(id=f"kb{j}", image_path=_image(folder / f"kb{j}.png", rng), text=f"retinopathy grade {j % len(labels)}",
               label=labels[j % len(labels)])
        for j in range(args.kb_items)
    ]
    kb = KnowledgeBase.build(items, embed, show_progress=False)
    retriever = LVLMAwareRetriever(kb)
    reader = HFLVLMReader.from_pretrained(build_tiny_llava(folder / "llava"), TASK, batch_size=64)
    cases = [
        Case(id=f"case{i}", image_path=_image(folder / f"case{i}.png", rng), labels=(labels[i % len(labels)],))
        for i in range(args.feedback_cases)
    ]
    start = time.perf_counter()
    cache = collect_feedback(cases, retriever, reader, folder / "feedback",
                             FeedbackConfig(n_candidates=args.n_candidates), show_progress=False)
    return time.perf_counter() - start, cache, retriever, cases, reader


def _time_validation(cache: FeedbackCache, retriever: LVLMAwareRetriever, reader: HFLVLMReader,
                     cases: list[Case]) -> tuple[float, float, int]:
    """Seconds of one real-retrieval validation, cold then warm, and the pairs the cold one scored."""
    # New ids, same images: no cached pool, so every neighbour pair is new to the reader (cold).
    fresh = [dataclasses.replace(c, id=f"val-{c.id}") for c in cases]
    validator = RetrievalValidator(retriever, reader, fresh, cache=cache)
    start = time.perf_counter()
    cold = validator({})
    middle = time.perf_counter()
    validator({})
    return middle - start, time.perf_counter() - middle, cold.pairs_scored


def _synthetic_cache(args: argparse.Namespace) -> tuple[FeedbackCache, LVLMAwareRetriever]:
    """A feedback cache of random cases over a random KB, shaped like a real one."""
    gen = torch.Generator().manual_seed(0)
    n, big_n, n_labels, dim = args.cases, args.n_candidates, len(TASK.labels), args.dim

    def unit(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=-1)

    image_vectors = unit(torch.randn(args.synthetic_kb, dim, generator=gen)).numpy()
    text_vectors = unit(torch.randn(args.synthetic_kb, dim, generator=gen)).numpy()
    items = [KBItem(id=f"kb{j}", image_path=f"kb{j}.png", text="") for j in range(args.synthetic_kb)]
    kb = KnowledgeBase(_VectorsOnlyEmbedding(), items, image_vectors=image_vectors, text_vectors=text_vectors,
                       image_hashes=[f"h{j}" for j in range(args.synthetic_kb)])
    retriever = LVLMAwareRetriever(kb)
    heads, candidate_ids = {}, {}
    for name in ("image", "text"):
        positions = torch.stack([torch.randperm(args.synthetic_kb, generator=gen)[:big_n] for _ in range(n)])  # (n, N)
        label_lp = torch.log_softmax(torch.randn(n, big_n, n_labels, generator=gen), dim=-1)  # (n, N, L)
        scores = torch.sort(torch.rand(n, big_n, generator=gen), dim=1, descending=True).values  # (n, N)
        heads[name] = _HeadArrays(positions, scores, label_lp[..., 0], label_lp, torch.ones(n, big_n, dtype=torch.bool))
        candidate_ids[name] = [[f"kb{p}" for p in row] for row in positions.tolist()]
    manifest = {
        "retriever": retriever_identity(retriever),
        "case_ids": [f"case{i}" for i in range(n)],
        "n_candidates": big_n,
        "heads": ["image", "text"],
        "retriever_k": {"image": 2, "text": 2},
        "task": {"name": TASK.name, "labels": list(TASK.labels), "multi_label": False},
        "config": {"shard_size": 256, "disagree_k": None},
    }
    embeddings = unit(torch.randn(n, dim, generator=gen))
    return FeedbackCache(manifest, embeddings, heads, candidate_ids=candidate_ids), retriever


def _time_engine(retriever: LVLMAwareRetriever, cache: FeedbackCache, config: TrainerConfig,
                 **kwargs: Any) -> tuple[float, float]:
    """Seconds to build the engine (data on device) and to run ``finetune``."""
    start = time.perf_counter()
    engine = RetrieverFinetuneEngine(retriever, cache, config=config, **kwargs)
    built = time.perf_counter()
    engine.finetune()
    return built - start, time.perf_counter() - built


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seconds, feedback, retriever, cases, reader = _time_feedback(folder, args)
        pairs = int(sum(feedback.mask(h).sum() for h in feedback.heads))
        rows.append((
            f"feedback collection ({args.feedback_cases} cases, N={args.n_candidates} x 2 heads, tiny LLaVA)",
            f"{seconds:.1f} s",
            f"{seconds / args.feedback_cases:.2f} s/case ({pairs} candidates, <= 2N reader passes per case)",
        ))
        cold, warm, scored = _time_validation(feedback, retriever, reader, cases)
        rows.append((
            f"real-retrieval validation step, cold ({args.feedback_cases} cases, top-2 x 2 heads, {scored} new pairs)",
            f"{cold:.2f} s",
            f"{cold / seconds:.3f} x the feedback-collection pass over the same cases",
        ))
        rows.append((
            "real-retrieval validation step, warm (every pair already in the cache)",
            f"{warm:.3f} s",
            f"{warm / seconds:.4f} x the feedback-collection pass over the same cases",
        ))
        paper = TrainerConfig(batch_size=256, n_train_candidates=20, refresh_every=10, show_progress=False,
                              eval_every=1000)
        synthetic, synth_retriever = _synthetic_cache(args)
        n_train = len(synthetic) - int(round(len(synthetic) * paper.validation_fraction))
        epoch_steps = max(1, n_train // paper.batch_size)
        build, train = _time_engine(synth_retriever, synthetic, paper.model_copy(update={"max_steps": epoch_steps}))
        rows.append((
            f"adapter epoch ({args.cases} cases x {args.n_candidates} cand. x 2 heads, {args.dim}-d, "
            f"{epoch_steps} steps of 256)",
            f"{build + train:.2f} s",
            f"setup {build:.2f} s + training {train:.2f} s (incl. 2 validations)",
        ))
        build, train = _time_engine(synth_retriever, synthetic, paper.model_copy(update={"max_steps": 300}))
        rows.append((
            "adapter, the paper's 300 steps (same cache)",
            f"{build + train:.2f} s",
            f"{1000 * train / 300:.1f} ms/step",
        ))
        encoder = TrainerConfig(mode="encoder", batch_size=16, n_train_candidates=20, refresh_every=10,
                                learning_rate=3e-4, max_steps=args.encoder_steps, eval_every=1000,
                                validation_fraction=0.0, show_progress=False)
        build, train = _time_engine(retriever, feedback, encoder, head="image", cases=cases)
        rows.append((
            f"encoder mode, tiny CLIP tower ({args.feedback_cases} cases, {args.encoder_steps} steps of 16)",
            f"{build + train:.2f} s",
            f"{1000 * train / args.encoder_steps:.1f} ms/step",
        ))
    print(f"Retriever training on {args.threads} CPU thread(s), torch {torch.__version__}\n")
    print("| measurement | time | detail |")
    print("|---|---:|---|")
    for name, value, detail in rows:
        print(f"| {name} | {value} | {detail} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
