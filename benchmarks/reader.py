"""Reader speed: batched likelihood scoring vs the loops a user would write.

For ``--cases`` query cases with ``--k`` retrieved candidates each and a 5-label task
(RetinaMNIST grades), on one tiny offline LLaVA (built from a config, random weights), compare:

* **naive generate + parse**: one ``generate`` per (case, candidate), then read the label out of
  the generated text (what the reference code did);
* **forward per (candidate, label)**: teacher forcing written as a loop, one forward pass per
  (case, candidate, label) on the prompt followed by the label;
* **HFLVLMReader, fast path**: all k candidates of several cases in one padded batch, labels read
  from the next-token logits (the verbalizers "0".."4" are single tokens);
* **HFLVLMReader, full teacher forcing**: the same batching with one sequence per label.

Prints cases/second and speed-ups as a Markdown table, plus the largest difference between the
loop's and the reader's log-likelihoods (they compute the same numbers).

Then, for tiny LLaVA and tiny Qwen2-VL, the reader's overhead over the model itself:
``reader_over_bare_forward`` is the reader's fast-path ``score`` time divided by the time of the
bare forward passes (``model(**batch)``) on the same batches, prepared beforehand by the processor.
Everything else the reader does (prompt rendering, image processing, tokenization, padding) is in
the numerator. Run::

    python benchmarks/reader.py                    # ~40 s on one CPU core
    python benchmarks/reader.py --device cuda --hidden 512 --layers 4 --cases 64
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.readers._hf_batch import last_positions
from llama_index_lvlm_retriever.readers.hf_lvlm import HFLVLMReader
from llama_index_lvlm_retriever.tasks import get_task
from llama_index_lvlm_retriever.testing import (
    TinyQwen2VLProcessor,
    build_tiny_llava,
    build_tiny_qwen2_vl,
)

TASK = get_task("retinamnist")


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("workload")
    data.add_argument("--cases", type=int, default=16, help="query cases (default: 16)")
    data.add_argument("--k", type=int, default=8, help="candidates per case (default: 8)")
    data.add_argument("--max-new-tokens", type=int, default=8, help="naive loop generation length (default: 8)")
    data.add_argument("--overhead-only", action="store_true", help="only the reader_over_bare_forward lines")
    data.add_argument("--no-reuse", action="store_true", help="reader with reuse_prompt_work=False (all work per row)")
    model = parser.add_argument_group("model")
    model.add_argument("--hidden", type=int, default=64, help="language-model width (default: 64)")
    model.add_argument("--layers", type=int, default=2, help="layers per tower (default: 2)")
    model.add_argument("--image-size", type=int, default=32, help="processed image side (default: 32)")
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=64, help="reader sequences per forward (default: 64)")
    run.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    run.add_argument("--repeats", type=int, default=3, help="timed repeats, median kept (default: 3)")
    return parser.parse_args(argv)


def _workload(folder: Path, n_cases: int, k: int) -> tuple[list[Case], list[list[KBItem]]]:
    rng = np.random.default_rng(0)
    captions = ["no retinopathy", "mild retinopathy with microaneurysms", "moderate retinopathy", "severe retinopathy"]

    def image(name: str) -> str:
        path = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(path)
        return str(path)

    kb = [KBItem(id=f"kb{j}", image_path=image(f"kb{j}"), text=captions[j % len(captions)]) for j in range(2 * k)]
    cases = [Case(id=f"case{i}", image_path=image(f"case{i}")) for i in range(n_cases)]
    candidates = [[kb[(i + j) % len(kb)] for j in range(k)] for i in range(n_cases)]
    return cases, candidates


def _prompt(processor: Any, case: Case, item: KBItem) -> tuple[str, list[Image.Image]]:
    content = [
        {"type": "image"},
        {"type": "text", "text": f"background: {item.text}"},
        {"type": "image"},
        {"type": "text", "text": TASK.render_question()},
    ]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    images = [Image.open(item.image_path).convert("RGB"), Image.open(case.image_path).convert("RGB")]
    return text, images


def naive_generate_loop(model: Any, processor: Any, cases: list[Case], candidates: list[list[KBItem]], max_new_tokens: int) -> list[list[str]]:
    """One generate per candidate, then the first label string found in the answer."""
    answers = []
    for case, row in zip(cases, candidates):
        labels = []
        for item in row:
            text, images = _prompt(processor, case, item)
            inputs = processor(text=[text], images=[images], return_tensors="pt").to(model.device)
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            decoded = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            labels.append(next((label for label in TASK.labels if label in decoded), ""))
        answers.append(labels)
    return answers


def forward_per_label_loop(model: Any, processor: Any, cases: list[Case], candidates: list[list[KBItem]]) -> np.ndarray:
    """Teacher forcing as a loop: one forward per (case, candidate, label)."""
    out = np.zeros((len(cases), len(candidates[0]), TASK.n_labels))
    for i, (case, row) in enumerate(zip(cases, candidates)):
        for j, item in enumerate(row):
            text, images = _prompt(processor, case, item)
            prompt = processor(text=[text], images=[images], return_tensors="pt").to(model.device)
            n = prompt["input_ids"].shape[1]
            for label, answer in enumerate(TASK.answer_texts):
                ids = processor.tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
                inputs = dict(prompt)
                inputs["input_ids"] = torch.cat([prompt["input_ids"], torch.tensor([ids], device=model.device)], dim=1)
                inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
                with torch.inference_mode():
                    log_probs = torch.log_softmax(model(**inputs).logits[0].float(), dim=-1)
                out[i, j, label] = sum(float(log_probs[n - 1 + t, tok]) for t, tok in enumerate(ids))
    return out


def bare_forward_batches(
    processor: Any, cases: list[Case], candidates: list[list[KBItem]], batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """The reader's fast-path batches, built beforehand: ``batch_size`` right-padded prompts each."""
    prompts = [_prompt(processor, case, item) for case, row in zip(cases, candidates) for item in row]
    batches = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = processor(text=[t for t, _ in chunk], images=[i for _, i in chunk], padding=True,
                          padding_side="right", return_tensors="pt")
        batches.append({key: value for key, value in batch.items() if isinstance(value, torch.Tensor)})
    return batches


def bare_forward(model: Any, batches: list[dict[str, torch.Tensor]]) -> None:
    """The forward passes alone, reading the logits at each row's last prompt token as the reader does."""
    with torch.inference_mode():
        for batch in batches:
            inputs = {k: v.to(model.device) for k, v in batch.items()}
            model(**inputs, logits_to_keep=last_positions(batch["attention_mask"]).to(model.device), use_cache=False)


def reader_overhead(args: argparse.Namespace, family: str, tmp: Path) -> dict[str, float]:
    """Seconds of the reader's fast path and of the bare forwards on the same batches, one family."""
    if family == "llava":
        folder = build_tiny_llava(tmp / family, hidden=args.hidden, layers=args.layers, image_size=args.image_size)
        processor = AutoProcessor.from_pretrained(folder)
    else:
        folder = build_tiny_qwen2_vl(tmp / family, hidden=args.hidden, layers=args.layers, image_size=args.image_size)
        processor = TinyQwen2VLProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).to(args.device).eval()
    cases, candidates = _workload(tmp, args.cases, args.k)
    reader = HFLVLMReader(model, processor, TASK, batch_size=args.batch_size, reuse_prompt_work=not args.no_reuse)
    assert reader.uses_fast_path
    batches = bare_forward_batches(processor, cases, candidates, args.batch_size)
    # Alternated, best of 2 x repeats each, in process CPU time: on a shared machine wall time
    # measures the neighbours too (with one torch thread, CPU time is the work done).
    reader_s, bare_s = _best_alternating(
        [lambda: reader.score(cases, candidates), lambda: bare_forward(model, batches)], 2 * args.repeats
    )
    return {"reader_s": reader_s, "bare_forward_s": bare_s, "reader_over_bare_forward": reader_s / bare_s}


def _best_alternating(fns: list[Callable[[], Any]], repeats: int) -> list[float]:
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.process_time()
            fn()
            best[i] = min(best[i], time.process_time() - start)
    return best


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    result = fn()  # warm-up (and the value returned)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.overhead_only:
        _compare_methods(args)
    print(f"\nReader overhead, {args.cases} cases x k={args.k}, batch_size={args.batch_size}, {args.device}, "
          f"{args.threads} thread(s), CPU time, best of {2 * args.repeats} alternating runs:")
    for family in ("llava", "qwen2_vl"):
        with tempfile.TemporaryDirectory() as tmp:
            result = reader_overhead(args, family, Path(tmp))
        print(f"  tiny {family}: reader {result['reader_s'] * 1e3:.1f} ms, bare forward "
              f"{result['bare_forward_s'] * 1e3:.1f} ms, reader_over_bare_forward={result['reader_over_bare_forward']:.2f}")
    return 0


def _compare_methods(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_llava(Path(tmp) / "llava", hidden=args.hidden, layers=args.layers, image_size=args.image_size)
        cases, candidates = _workload(Path(tmp), args.cases, args.k)
        model = AutoModelForImageTextToText.from_pretrained(folder).to(args.device).eval()
        processor = AutoProcessor.from_pretrained(folder)
        fast = HFLVLMReader(model, processor, TASK, batch_size=args.batch_size)
        full = HFLVLMReader(model, processor, TASK, batch_size=args.batch_size, scoring="full")
        assert fast.uses_fast_path
        n_params = sum(p.numel() for p in model.parameters())

        methods: list[tuple[str, str, Callable[[], Any]]] = [
            ("naive: generate + parse per candidate", f"{args.k} generate", lambda: naive_generate_loop(model, processor, cases, candidates, args.max_new_tokens)),
            ("loop: one forward per (candidate, label)", f"{args.k * TASK.n_labels} forward", lambda: forward_per_label_loop(model, processor, cases, candidates)),
            ("HFLVLMReader, full teacher forcing (batched)", f"{args.k * TASK.n_labels} rows", lambda: full.score(cases, candidates)),
            ("HFLVLMReader, fast path (batched)", f"{args.k} rows", lambda: fast.score(cases, candidates)),
        ]
        results = []
        for name, work, fn in methods:
            seconds, value = _time(fn, args.repeats)
            results.append((name, work, seconds, value))

    naive_seconds = results[0][2]
    loop_seconds = results[1][2]
    print(
        f"\nReader scoring, {args.cases} cases x k={args.k} candidates x {TASK.n_labels} labels, tiny LLaVA "
        f"({n_params / 1e3:.0f}k parameters, width {args.hidden}, {args.layers} layers, {args.image_size}px images), "
        f"{args.device}, {args.threads} thread(s), batch_size={args.batch_size}, median of {args.repeats}.\n"
    )
    print("| method | work per case | cases/s | vs naive loop | vs forward-per-label loop |")
    print("|---|---|---:|---:|---:|")
    for name, work, seconds, _ in results:
        rate = args.cases / seconds
        print(f"| {name} | {work} | {rate:.1f} | {naive_seconds / seconds:.1f}x | {loop_seconds / seconds:.1f}x |")
    loop_ll = results[1][3]
    full_scores, fast_scores = results[2][3], results[3][3]
    diff_full = float(np.abs(full_scores.raw_log_likelihoods - loop_ll).max())
    diff_fast = float(np.abs(fast_scores.raw_log_likelihoods - loop_ll).max())
    print(
        f"\nSame numbers: max |reader - loop| log-likelihood = {diff_full:.2e} (full), {diff_fast:.2e} (fast path; "
        "single-token verbalizers, so equal to teacher forcing)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
