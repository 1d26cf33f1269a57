"""HFLVLMReader: likelihood label scoring with any transformers image-text-to-text model.

The model is loaded with ``AutoModelForImageTextToText`` + ``AutoProcessor`` (hub id or local
folder: Qwen2-VL / Qwen2.5-VL, LLaVA, Idefics3 / SmolVLM, PaliGemma with a chat template, ...),
and each (case, candidate) pair is rendered with the processor's chat template as one user turn
(see :mod:`~llama_index_lvlm_retriever.readers.prompt`) followed by the generation prompt.

**Labels are scored by likelihood, never by parsing generated text.** Each label's verbalizer is
tokenized as it would follow the generation prompt (``answer_prefix``, by default a space when the
prompt does not end in whitespace, e.g. after ``"Assistant:"``) and scored two ways:

* ``"full"`` (teacher forcing): ``log P(v_1 .. v_m | prompt) = sum_t log p(v_t | prompt, v_<t)``;
  one sequence per (case, candidate, label), i.e. ``L`` times the fast path's work.
* ``"first_token"`` (fast path): one sequence per (case, candidate); the next-token
  log-probability of each verbalizer's first token, read from the logits at the last prompt token.
  It equals ``"full"`` for single-token verbalizers and decides between labels exactly when their
  first tokens differ; for multi-token verbalizers it scores the first token only.
* ``"auto"`` (default): the fast path when all verbalizers start with distinct tokens, else full.

Single-label tasks are then normalised over the label set (log-softmax); multi-label tasks ask one
yes/no question per label and keep ``log P(yes) - log(P(yes) + P(no))``.

Batching: every (case, candidate[, label]) sequence of a ``score`` call is flattened, and
``batch_size`` of them at a time go through one processor call and one forward pass, right-padded
(see :mod:`~llama_index_lvlm_retriever.readers._hf_batch`), with logits computed only at the
positions read. A batched score equals the unbatched one up to float rounding. Each distinct
image is processed once and the chat template rendered once per prompt layout
(``reuse_prompt_work``, see :mod:`~llama_index_lvlm_retriever.readers._hf_reuse`), which gives the
same inputs bit for bit.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from llama_index_lvlm_retriever.data.records import Case, KBItem
from llama_index_lvlm_retriever.readers._answer_tokens import (
    answer_prefix_for,
    answer_token_ids,
    first_token_clash,
    warn_on_token_prefixes,
)
from llama_index_lvlm_retriever.readers._hf_batch import (
    append_continuations,
    continuation_log_likelihoods,
    first_token_log_probs,
    last_positions,
    normalise_label_scores,
)
from llama_index_lvlm_retriever.readers._hf_loading import (
    DTypeName,
    load_model,
    load_processor,
    resolve_source,
)
from llama_index_lvlm_retriever.readers._hf_reuse import (
    CachingImageProcessor,
    ChatTemplateCache,
    vectorised_mm_token_type_ids,
)
from llama_index_lvlm_retriever.readers.base import Reader, ReaderScores, check_inputs
from llama_index_lvlm_retriever.readers.prompt import (
    PromptBuilder,
    PromptPart,
    ReaderPrompt,
    ReaderPromptConfig,
)
from llama_index_lvlm_retriever.storage.files import atomic_write_text
from llama_index_lvlm_retriever.tasks import TaskSpec
from llama_index_lvlm_retriever.version import __version__

logger = logging.getLogger(__name__)

__all__ = ["READER_CONFIG_NAME", "DTypeName", "HFLVLMReader", "HFLVLMReaderConfig", "ScoringMode"]

ScoringMode = Literal["auto", "first_token", "full"]
READER_CONFIG_NAME = "reader_config.json"

# Tensors up to this many elements are hashed whole by fingerprint(); larger ones by a strided
# sample of this many elements (a fine-tune changes values everywhere in a touched matrix).
_FINGERPRINT_SAMPLE = 1 << 16
_PROBE_TEXT = "probe"


class HFLVLMReaderConfig(BaseModel):
    """Typed settings of an :class:`HFLVLMReader` (saved in ``reader_config.json``).

    Args:
        prompt: Prompt layout (images shown, background template, image size bound).
        scoring: ``"auto"``, ``"first_token"`` or ``"full"`` (see the module docstring).
        batch_size: Sequences per forward pass (a sequence is one (case, candidate) prompt on the
            fast path, one (case, candidate, label) on the full path); bounds memory.
        answer_prefix: Text between the generation prompt and a verbalizer. ``None``: a space if
            the generation prompt does not end in whitespace (``"Assistant:"``), else nothing
            (``"<|im_start|>assistant\\n"``).
        chat_template: Jinja chat template to use instead of the processor's (needed for
            processors without one, e.g. PaliGemma).
        reuse_prompt_work: Process each distinct image once (not once per row it appears in) and
            render the chat template once per prompt layout. Exact: both are checked against the
            plain path on first use and turned off for a processor or template where they differ.
            ``False`` does all the work per row (the path before this setting existed).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: ReaderPromptConfig = Field(default_factory=ReaderPromptConfig, description="Prompt layout.")
    scoring: ScoringMode = Field(default="auto", description="Likelihood scoring mode.")
    batch_size: int = Field(default=8, gt=0, description="Sequences per forward pass.")
    answer_prefix: str | None = Field(
        default=None, description="Text before each verbalizer (None = automatic)."
    )
    chat_template: str | None = Field(
        default=None, description="Chat template overriding the processor's."
    )
    reuse_prompt_work: bool = Field(
        default=True,
        description="Process each distinct image once per batch and render the chat template once per prompt "
        "layout (checked to give identical inputs); False = all work per row.",
    )


class HFLVLMReader(Reader):
    """Label scores from a transformers image-text-to-text model, by verbalizer likelihood.

    Pass a ready ``model`` and ``processor`` (moved to their device by you), or load by hub id or
    folder with :meth:`from_pretrained`.

    Args:
        model: An image-text-to-text model (e.g. from ``AutoModelForImageTextToText``).
        processor: Its processor (image processor + tokenizer + chat template).
        task: The task whose labels are scored.
        config: Settings; or give them as keyword arguments (``batch_size=4``), not both.
        model_name: Name recorded for provenance (defaults to the model's ``name_or_path``).
        **config_kwargs: Fields of :class:`HFLVLMReaderConfig`.

    Raises:
        ValueError: The processor has no image processor or chat template, ``config`` and keyword
            settings are both given, or ``scoring="first_token"`` while two verbalizers share their
            first token (the message names them).

    Example:
        >>> import tempfile
        >>> from llama_index_lvlm_retriever.testing import build_tiny_llava
        >>> from llama_index_lvlm_retriever.tasks import get_task
        >>> reader = HFLVLMReader.from_pretrained(build_tiny_llava(tempfile.mkdtemp()),
        ...                                       get_task("breastmnist"), batch_size=16)
        >>> reader.uses_fast_path
        True
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processor: Any,
        task: TaskSpec,
        config: HFLVLMReaderConfig | None = None,
        *,
        model_name: str | None = None,
        **config_kwargs: Any,
    ) -> None:
        if config is not None and config_kwargs:
            raise ValueError(
                f"pass either config= or keyword settings, not both (got config and {sorted(config_kwargs)})"
            )
        self.config = config or HFLVLMReaderConfig(**config_kwargs)
        self.task = task
        self.model = model.eval()
        self.processor = processor
        self.model_name = model_name or str(getattr(model, "name_or_path", "") or type(model).__name__)
        self._prompts = PromptBuilder(task, self.config.prompt)
        self._check_processor()
        self._tokenizer = processor.tokenizer
        pad = self._tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else self._tokenizer.eos_token_id)
        self._paligemma = getattr(model.config, "model_type", "") == "paligemma"
        self._accepts_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._probe = self._chat_text(ReaderPrompt(parts=(PromptPart("text", "question", text=_PROBE_TEXT),)))
        prefix = self.config.answer_prefix
        self._answer_prefix = answer_prefix_for(self._probe) if prefix is None else prefix
        answers = (task.yes_verbalizer, task.no_verbalizer) if task.multi_label else task.answer_texts
        self._answers: tuple[str, ...] = tuple(answers)
        self._continuations = [
            answer_token_ids(self._tokenizer, self._probe, self._answer_prefix, a) for a in answers
        ]
        self._fast = self._choose_path()
        self._fingerprint: str | None = None
        # The processor the batches go through, and how a prompt becomes chat text: with reuse, a
        # shallow copy whose image processor caches per image (the caller's processor is untouched).
        self._batch_processor = processor
        self._prompt_text: Any = self._chat_text
        if self.config.reuse_prompt_work:
            self._batch_processor = copy.copy(processor)
            self._batch_processor.image_processor = CachingImageProcessor(
                processor.image_processor, capacity=2 * self.config.batch_size + 8
            )
            self._prompt_text = ChatTemplateCache(self._chat_text)
            create_types = vectorised_mm_token_type_ids(processor)
            if create_types is not None:
                self._batch_processor.create_mm_token_type_ids = create_types

    # Construction helpers.

    def _check_processor(self) -> None:
        if getattr(self.processor, "image_processor", None) is None or getattr(self.processor, "tokenizer", None) is None:
            raise ValueError(
                f"{type(self.processor).__name__} is not a multimodal processor (no image_processor "
                "or tokenizer); pass the model's processor, e.g. AutoProcessor.from_pretrained(dir)"
            )
        if self.config.chat_template is None and not getattr(self.processor, "chat_template", None):
            raise ValueError(
                f"processor of {self.model_name!r} has no chat template; pass chat_template= (a "
                "Jinja template rendering images as the model's image token) to HFLVLMReader"
            )

    def _chat_text(self, prompt: ReaderPrompt) -> str:
        kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": False}
        if self.config.chat_template is not None:
            kwargs["chat_template"] = self.config.chat_template
        return str(self.processor.apply_chat_template(prompt.to_chat_messages(), **kwargs))

    def _choose_path(self) -> bool:
        clash = first_token_clash(self._tokenizer, self._answers, self._continuations, self.task.name)
        if self.config.scoring == "first_token" and clash is not None:
            raise ValueError(clash)
        fast = self.config.scoring == "first_token" or (self.config.scoring == "auto" and clash is None)
        if not fast:
            warn_on_token_prefixes(self._answers, self._continuations)
        return fast

    # Loading and saving.

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | Path,
        task: TaskSpec | None = None,
        *,
        device: str = "cpu",
        dtype: DTypeName = "auto",
        processor: Any = None,
        config: HFLVLMReaderConfig | None = None,
        **config_kwargs: Any,
    ) -> HFLVLMReader:
        """Load model and processor by hub id or local folder.

        A folder written by :meth:`save_pretrained` also restores the task and settings (keyword
        settings override them).

        Args:
            name_or_dir: Hub id (``"Qwen/Qwen2-VL-2B-Instruct"``) or local folder.
            task: The task; optional for a folder with ``reader_config.json``.
            device: Torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``).
            dtype: Weight dtype; ``"auto"`` keeps the checkpoint's.
            processor: A ready processor (for processors ``AutoProcessor`` cannot build).
            config: Settings (exclusive with keyword settings).
            **config_kwargs: Fields of :class:`HFLVLMReaderConfig`.

        Returns:
            The reader, model in eval mode on ``device``.

        Raises:
            ValueError: No task, or the folder has no usable processor (the message says what to
                save).
            OSError: No model weights at ``name_or_dir``.
        """
        source = resolve_source(name_or_dir)
        saved = Path(source) / READER_CONFIG_NAME
        if saved.is_file():
            record = json.loads(saved.read_text(encoding="utf-8"))
            task = task or TaskSpec.from_dict(record["task"], source=str(saved))
            if config is None:
                config = HFLVLMReaderConfig.model_validate({**record["config"], **config_kwargs})
                config_kwargs = {}
        if task is None:
            raise ValueError(
                f"no task given and {source!r} has no {READER_CONFIG_NAME}; pass task= "
                "(e.g. get_task('retinamnist'))"
            )
        if processor is None:
            processor = load_processor(source)  # first: it is cheap and fails more often
        model = load_model(source, dtype, device)
        return cls(model, processor, task, config, model_name=str(name_or_dir), **config_kwargs)

    def save_pretrained(self, save_dir: str | Path, *, save_model: bool = True) -> Path:
        """Save model, processor and ``reader_config.json`` (task + settings) to a folder.

        Args:
            save_dir: The folder.
            save_model: ``False`` writes processor and settings only (e.g. beside LoRA adapter
                files, which ``from_pretrained`` loads on top of their base model).

        Returns:
            The folder; :meth:`from_pretrained` restores the same reader from it.
        """
        folder = Path(save_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if save_model:
            self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        record = {
            "class_name": type(self).__name__,
            "task": self.task.to_dict(),
            "config": self.config.model_dump(mode="json"),
            "versions": {"llama_index_lvlm_retriever": __version__, "torch": torch.__version__},
        }
        atomic_write_text(folder / READER_CONFIG_NAME, json.dumps(record, indent=2) + "\n")
        return folder

    # Introspection.

    @property
    def uses_fast_path(self) -> bool:
        """Whether labels are scored from next-token logits (one sequence per pair)."""
        return self._fast

    @property
    def answer_token_ids(self) -> list[list[int]]:
        """Token ids of each scored answer (verbalizers, or yes/no for multi-label tasks)."""
        return [list(ids) for ids in self._continuations]

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    def fingerprint(self) -> str:
        """Short SHA-256 of the weights (sampled for large tensors), task and settings.

        Returns:
            16 hex digits; differs between checkpoints, dtypes, tasks and prompt settings.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(json.dumps(self.task.to_dict(), sort_keys=True).encode())
            digest.update(json.dumps(self.config.model_dump(mode="json"), sort_keys=True).encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                flat = tensor.detach().reshape(-1)
                if flat.numel() > _FINGERPRINT_SAMPLE:
                    flat = flat[:: flat.numel() // _FINGERPRINT_SAMPLE]
                digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
                digest.update(flat.to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    # Scoring.

    def score(
        self,
        cases: Sequence[Case],
        candidates: Sequence[Sequence[KBItem | None]],
        *,
        show_progress: bool = False,
    ) -> ReaderScores:
        """Label log-probabilities per (case, candidate); see :class:`~.base.Reader`.

        Raises:
            ImageLoadError: A query or candidate image is missing or unreadable (named).
            ValueError: Mismatched inputs, or a case without a question for a task without one.
        """
        k = check_inputs(cases, candidates)
        n = len(cases)
        self._prompts.check_images(cases, candidates)
        questions = self._prompts.questions_per_pair
        units = [(i, j, q) for i in range(n) for j in range(k) for q in range(questions)]
        n_answers = len(self._continuations)
        # A row is one sequence: (unit, answer) on the full path, (unit, -1) on the fast path.
        rows = [(u, -1) for u in range(len(units))] if self._fast else [
            (u, a) for u in range(len(units)) for a in range(n_answers)
        ]
        unit_scores = np.zeros((len(units), n_answers))  # (units, C)
        texts: dict[int, tuple[str, list[Any]]] = {}
        size = self.config.batch_size
        chunks = [rows[start : start + size] for start in range(0, len(rows), size)]
        for chunk in tqdm(chunks, desc="reader", disable=not show_progress):
            for u, _ in chunk:
                if u not in texts:
                    i, j, q = units[u]
                    label_index = q if self.task.multi_label else None
                    prompt = self._prompts.build(cases[i], candidates[i][j], label_index=label_index, slot=j)
                    texts[u] = (self._prompt_text(prompt), prompt.images)
            values = self._score_rows([texts[u] for u, _ in chunk], [a for _, a in chunk])
            for (u, a), value in zip(chunk, values):
                if a < 0:
                    unit_scores[u] = value
                else:
                    unit_scores[u, a] = value[0]
            # Units are contiguous in rows, so texts of finished units can go.
            last_unit = chunk[-1][0]
            for u in [u for u in texts if u < last_unit]:
                del texts[u]
        return self._assemble(unit_scores, cases, candidates, k)

    def _score_rows(self, prompts: list[tuple[str, list[Any]]], answers: list[int]) -> list[np.ndarray]:
        images = [imgs for _, imgs in prompts]
        batch = self._batch_processor(
            text=[text for text, _ in prompts],
            images=images if any(images) else None,
            padding=True,
            padding_side="right",
            return_tensors="pt",
        )
        batch = {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}
        if self._fast:
            positions = last_positions(batch["attention_mask"])  # (R, 1)
        else:
            conts = [self._continuations[a] for a in answers]
            batch, positions, targets, mask = append_continuations(
                batch, conts, pad_token_id=self._pad_id, paligemma=self._paligemma
            )
        logits = self._forward(batch, positions)  # (R, P, V)
        if self._fast:
            firsts = [ids[0] for ids in self._continuations]
            return list(first_token_log_probs(logits, firsts).cpu().double().numpy())  # R x (C,)
        sums = continuation_log_likelihoods(logits, targets, mask)  # (R,)
        return [np.array([value]) for value in sums.cpu().double().numpy()]

    def _forward(self, batch: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
        device, dtype = self.device, self.model.dtype
        inputs = {
            key: value.to(device, dtype=dtype) if value.is_floating_point() else value.to(device)
            for key, value in batch.items()
        }
        rows = positions.shape[0]
        with torch.inference_mode():
            if self._accepts_logits_to_keep:
                out = self.model(**inputs, logits_to_keep=positions.to(device), use_cache=False)
                logits = out.logits
                if logits.ndim == 4:
                    # Versions without per-row positions index every row at every row's positions:
                    # (R, R, P, V) -> keep each row's own positions (the diagonal).
                    logits = logits[torch.arange(rows), torch.arange(rows)]
            else:
                logits = self.model(**inputs, use_cache=False).logits  # (R, T, V)
                logits = torch.take_along_dim(logits, positions.to(device)[..., None], dim=1)
        return logits  # (R, P, V)

    def _assemble(
        self,
        unit_scores: np.ndarray,
        cases: Sequence[Case],
        candidates: Sequence[Sequence[KBItem | None]],
        k: int,
    ) -> ReaderScores:
        log_probs, raw = normalise_label_scores(unit_scores, len(cases), k, self.task.n_labels, self.task.multi_label)
        return ReaderScores(
            log_probs=log_probs,
            raw_log_likelihoods=raw,
            labels=tuple(self.task.labels),
            multi_label=self.task.multi_label,
            case_ids=tuple(case.id for case in cases),
            candidate_ids=tuple(tuple(None if c is None else c.id for c in row) for row in candidates),
        )
