"""Offline byte-level BPE tokenizers, trained deterministically on a small built-in corpus.

:func:`train_byte_level_bpe` is the generic part (any normaliser, pre-tokeniser, special tokens,
end-of-word suffix) that every tiny model builder reuses; :func:`build_clip_tokenizer` and
:func:`save_clip_tokenizer` wrap its output in a ``CLIPTokenizer`` with CLIP's text pipeline and
special tokens, so ``AutoTokenizer``/``AutoProcessor.from_pretrained`` load it like a real one.

Every vocabulary covers all 256 byte symbols (and, with a suffix, their word-final forms), so no
text ever maps to the unknown token. That matters for CLIP, whose unknown token is
``<|endoftext|>``: a stray one mid-sentence would move the text pooling position.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, normalizers, pre_tokenizers
from transformers import CLIPTokenizer

from llama_index_lvlm_retriever.storage.files import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "CLIP_BOS_TOKEN",
    "CLIP_EOS_TOKEN",
    "DEFAULT_CORPUS",
    "BPEVocab",
    "build_clip_tokenizer",
    "clip_text_pipeline",
    "save_clip_tokenizer",
    "train_byte_level_bpe",
    "train_clip_bpe",
    "write_bpe_files",
]

CLIP_BOS_TOKEN = "<|startoftext|>"
CLIP_EOS_TOKEN = "<|endoftext|>"
_CLIP_WORD_SUFFIX = "</w>"
# CLIP keeps contractions, runs of letters, single digits and runs of other non-space symbols as
# pre-tokens and drops the whitespace between them; its special tokens stay whole.
_CLIP_SPLIT_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)

DEFAULT_CORPUS: tuple[str, ...] = (
    "frontal chest radiograph shows no acute cardiopulmonary process",
    "lateral chest x-ray with a small left pleural effusion and basilar atelectasis",
    "mild cardiomegaly with pulmonary vascular congestion, no pneumothorax",
    "right lower lobe consolidation consistent with pneumonia",
    "endotracheal tube terminates 4 cm above the carina",
    "ct of the abdomen shows a hypodense lesion in the liver",
    "axial mri of the brain with a ring enhancing mass and surrounding edema",
    "fundus photograph with microaneurysms and dot blot hemorrhages",
    "diabetic retinopathy grade 0 1 2 3 4: no dr, mild, moderate, severe, proliferative",
    "dermoscopy of a pigmented lesion with an atypical network",
    "melanoma, melanocytic nevus, basal cell carcinoma, actinic keratosis",
    "benign keratosis, dermatofibroma, vascular lesion",
    "histopathology slide of an invasive ductal carcinoma",
    "ultrasound of the thyroid with a hypoechoic nodule",
    "electroluminescence image of a solar cell with a crack, defective or functional",
    "normal abnormal benign malignant positive negative present absent",
    "question: is there evidence of pneumonia? answer: yes no",
    "background: the findings are unchanged compared with the prior study",
    "impression: no acute findings. findings: heart size is normal, lungs are clear",
)


@dataclass(frozen=True)
class BPEVocab:
    """A trained BPE model: the token-to-id map and the ordered merge rules.

    Attributes:
        vocab: Token string -> id, ids ``0..len(vocab)-1`` with the special tokens first.
        merges: Merge rules in priority order, each a pair of token strings.
    """

    vocab: dict[str, int]
    merges: list[tuple[str, str]]


def train_byte_level_bpe(
    corpus: Iterable[str] = DEFAULT_CORPUS,
    *,
    vocab_size: int = 1024,
    special_tokens: Sequence[str] = (),
    end_of_word_suffix: str | None = None,
    normalizer: normalizers.Normalizer | None = None,
    pre_tokenizer: pre_tokenizers.PreTokenizer | None = None,
) -> BPEVocab:
    """Train a byte-level BPE on a small corpus, deterministically, covering every byte symbol.

    The ``tokenizers`` normaliser and pre-tokeniser split the corpus into words exactly as the
    final tokenizer will; the merges are then learned here, greedily by pair frequency with ties
    going to the lexicographically smallest pair. (``tokenizers``' own trainer breaks ties in hash
    order, so two runs can give different vocabularies.)

    Args:
        corpus: Training sentences (the built-in medical captions and label words by default).
        vocab_size: Largest final vocabulary, counting the special tokens and the byte symbols;
            training stops earlier once every corpus word is a single token.
        special_tokens: Tokens given the first ids, in this order (e.g. BOS, EOS, PAD).
        end_of_word_suffix: Suffix marking word-final tokens (CLIP uses ``"</w>"``), or None.
        normalizer: Text normaliser applied before splitting (e.g. lowercasing), or None.
        pre_tokenizer: How text is split into words; must end in a byte-level step. Defaults to
            GPT-2 style ``ByteLevel(add_prefix_space=False)``.

    Returns:
        The vocabulary (special tokens, then the 256 byte symbols, then their word-final forms
        when there is a suffix, then one token per merge) and the merges in priority order, ready
        for a ``tokenizers`` BPE model or a transformers tokenizer's ``vocab=``/``merges=``.

    Raises:
        ValueError: ``vocab_size`` cannot hold the special tokens and the byte symbols.

    Example:
        >>> bpe = train_byte_level_bpe(["a tiny corpus"], vocab_size=300, special_tokens=["<s>"])
        >>> bpe.vocab["<s>"], len(bpe.vocab) <= 300
        (0, True)
    """
    suffix = end_of_word_suffix or ""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base_symbols = alphabet + [symbol + suffix for symbol in alphabet] if suffix else alphabet
    vocab: dict[str, int] = {}
    for token in [*special_tokens, *base_symbols]:
        vocab.setdefault(token, len(vocab))
    if vocab_size < len(vocab):
        raise ValueError(
            f"vocab_size={vocab_size} cannot hold the {len(special_tokens)} special tokens and "
            f"{len(base_symbols)} byte symbols ({len(vocab)} tokens); pass a larger vocab_size"
        )
    splitter = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    word_counts: Counter[tuple[str, ...]] = Counter()
    for text in corpus:
        normalized = normalizer.normalize_str(text) if normalizer is not None else text
        for piece, _ in splitter.pre_tokenize_str(normalized):
            if piece:
                word_counts[(*piece[:-1], piece[-1] + suffix)] += 1
    words = dict(word_counts)  # word as its current symbols -> occurrences in the corpus
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        pair_counts: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pair_counts[pair] += count
        if not pair_counts:
            break  # every word is already one token
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        merges.append(best)
        vocab.setdefault(best[0] + best[1], len(vocab))
        words = {_apply_merge(symbols, best): count for symbols, count in words.items()}
    return BPEVocab(vocab=vocab, merges=merges)


def _apply_merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    index = 0
    while index < len(symbols):
        if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == pair:
            merged.append(symbols[index] + symbols[index + 1])
            index += 2
        else:
            merged.append(symbols[index])
            index += 1
    return tuple(merged)


def clip_text_pipeline() -> tuple[normalizers.Normalizer, pre_tokenizers.PreTokenizer]:
    """CLIP's normaliser (NFC, collapse whitespace, lowercase) and byte-level pre-tokeniser.

    Returns:
        ``(normalizer, pre_tokenizer)`` matching what ``CLIPTokenizer`` applies at encode time, so
        merges learned with them are the merges CLIP's tokenizer will use.
    """
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return normalizer, pre_tokenizer


def train_clip_bpe(corpus: Iterable[str] = DEFAULT_CORPUS, *, vocab_size: int = 1024) -> BPEVocab:
    """Train a BPE with CLIP's text pipeline: ids 0 and 1 are ``<|startoftext|>``/``<|endoftext|>``.

    Args:
        corpus: Training sentences.
        vocab_size: Largest final vocabulary (see :func:`train_byte_level_bpe`); at least 514.

    Returns:
        The vocabulary (word-final tokens end in ``"</w>"``) and merges (a fresh copy per call).
    """
    cached = _cached_clip_bpe(tuple(corpus), vocab_size)
    return BPEVocab(vocab=dict(cached.vocab), merges=list(cached.merges))


@functools.lru_cache(maxsize=8)
def _cached_clip_bpe(corpus: tuple[str, ...], vocab_size: int) -> BPEVocab:
    # Training is deterministic, so every tiny model built in one process can share one run
    # (~0.1 s each otherwise); callers get copies, never this object.
    normalizer, pre_tokenizer = clip_text_pipeline()
    return train_byte_level_bpe(
        corpus,
        vocab_size=vocab_size,
        special_tokens=(CLIP_BOS_TOKEN, CLIP_EOS_TOKEN),
        end_of_word_suffix=_CLIP_WORD_SUFFIX,
        normalizer=normalizer,
        pre_tokenizer=pre_tokenizer,
    )


def build_clip_tokenizer(
    bpe: BPEVocab | None = None, *, model_max_length: int = 77
) -> CLIPTokenizer:
    """Wrap a trained BPE in a ``CLIPTokenizer`` (BOS id 0, EOS = PAD = UNK id 1).

    Args:
        bpe: Output of :func:`train_clip_bpe`; trained on the built-in corpus when None.
        model_max_length: Longest sequence the tokenizer reports (the text model's positions).

    Returns:
        A fast ``CLIPTokenizer`` that needs no download.

    Example:
        >>> tok = build_clip_tokenizer(model_max_length=16)
        >>> tok("chest x-ray").input_ids[0] == tok.bos_token_id
        True
    """
    bpe = bpe or train_clip_bpe()
    return CLIPTokenizer(
        vocab=bpe.vocab, merges=list(bpe.merges), model_max_length=model_max_length
    )


def write_bpe_files(bpe: BPEVocab, save_dir: str | Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` (the GPT-2/CLIP slow-tokenizer file pair).

    Args:
        bpe: The vocabulary and merges to write.
        save_dir: Folder to write into (created if missing).

    Returns:
        The paths of ``vocab.json`` and ``merges.txt``.
    """
    folder = Path(save_dir)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_path = folder / "vocab.json"
    merges_path = folder / "merges.txt"
    atomic_write_text(vocab_path, json.dumps(bpe.vocab, ensure_ascii=False))
    lines = ["#version: 0.2", *(f"{left} {right}" for left, right in bpe.merges)]
    atomic_write_text(merges_path, "\n".join(lines) + "\n")
    return vocab_path, merges_path


def save_clip_tokenizer(
    save_dir: str | Path, *, bpe: BPEVocab | None = None, model_max_length: int = 77
) -> Path:
    """Save an offline CLIP tokenizer folder that ``CLIPTokenizer.from_pretrained`` loads.

    The folder holds ``vocab.json`` + ``merges.txt`` (enough on their own) and the fast
    ``tokenizer.json`` + ``tokenizer_config.json`` that ``save_pretrained`` writes.

    Args:
        save_dir: Folder to write into (created if missing).
        bpe: Output of :func:`train_clip_bpe`; trained on the built-in corpus when None.
        model_max_length: Longest sequence the tokenizer reports.

    Returns:
        ``save_dir`` as a ``Path``.

    Example:
        >>> import tempfile
        >>> folder = save_clip_tokenizer(tempfile.mkdtemp())
        >>> sorted(p.name for p in folder.iterdir())[-1]
        'vocab.json'
    """
    bpe = bpe or train_clip_bpe()
    folder = Path(save_dir)
    build_clip_tokenizer(bpe, model_max_length=model_max_length).save_pretrained(folder)
    write_bpe_files(bpe, folder)
    logger.debug("saved offline CLIP tokenizer (%d tokens) to %s", len(bpe.vocab), folder)
    return folder


