"""TaskSpec: what the reader is asked and which closed set of answers it chooses from.

A task fixes the question (a default that a case may override), the closed label set, the
*verbalizer* of each label (the text the model should say for it, scored by likelihood), the mode
(single- or multi-label) and optional instruction text (e.g. what each grade means). Readers turn a
task into prompts and label scores; the evaluator and the training code read its label set.

Placeholders (plain substring replacement, so other braces in the text are left alone):

* ``{options}``: the verbalizers joined by ``", "`` (in the question or the instruction);
* ``{label}``: multi-label tasks only, the verbalizer of the label being asked about. A multi-label
  task asks one yes/no question per label and needs ``{label}`` in its question.

Built-ins (labels listed in MedMNIST index order, so ``task.labels[y]`` names an ``.npz`` label):

========================  ==============================================================  =======
name                      labels                                                          mode
========================  ==============================================================  =======
``retinamnist``           diabetic-retinopathy grade ``"0"`` ... ``"4"``                  single
``dermamnist``            7 skin-lesion types (``"actinic keratosis"`` ... )              single
``breastmnist``           ``"malignant"`` / ``"benign"``, verbalized ``yes`` / ``no``     single
``closed_vqa``            ``"yes"`` / ``"no"``; the question comes from each case         single
``chestmnist``            14 thoracic findings, one yes/no question each                  multi
========================  ==============================================================  =======

Example:
    >>> task = get_task("breastmnist")
    >>> task.label_index("malignant"), task.verbalizers
    (0, ('yes', 'no'))
    >>> custom = TaskSpec(name="cracks", labels=("cracked", "intact"), question="Is the cell cracked?",
    ...                   verbalizers=("yes", "no"))
    >>> custom.render_question()
    'Is the cell cracked?'
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llama_index_lvlm_retriever.errors import InputFormatError, UsageError
from llama_index_lvlm_retriever.storage.files import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_PLACEHOLDER",
    "OPTIONS_PLACEHOLDER",
    "TaskSpec",
    "get_task",
    "list_tasks",
]

OPTIONS_PLACEHOLDER = "{options}"
"""Replaced by the verbalizers joined by ``", "``."""
LABEL_PLACEHOLDER = "{label}"
"""Replaced by the verbalizer of the label asked about (multi-label questions)."""


def _normalize(text: str) -> str:
    # Two verbalizers that differ only in case or surrounding spaces cannot be told apart in a
    # free-text answer, so duplicates are checked on this form.
    return " ".join(text.split()).casefold()


def _check_names(values: Sequence[str], what: str, task: str) -> None:
    if not values:
        raise ValueError(f"task {task!r}: {what} must not be empty; list the closed label set")
    seen: dict[str, int] = {}
    for position, value in enumerate(values):
        if not value.strip():
            raise ValueError(
                f"task {task!r}: {what}[{position}] is empty; every entry needs visible text"
            )
        key = _normalize(value)
        if key in seen:
            raise ValueError(
                f"task {task!r}: duplicate {what} {value!r} at positions {seen[key]} and {position} "
                f"(compared case- and space-insensitively); {what} must be distinct"
            )
        seen[key] = position


class TaskSpec(BaseModel):
    """A closed-set diagnostic task: question, labels, their verbalizers and the mode.

    Args:
        name: Short identifier (recorded in caches and reports).
        labels: Label names in a fixed order (the index order of every score array). Names are
            what cases carry in ``Case.labels``.
        verbalizers: What the model should answer for each label, in label order; defaults to the
            label names. Single-label readers score each verbalizer's likelihood as the answer;
            multi-label readers insert it into the question at ``{label}``.
        question: Default question, used when a case's question is ``""``. May contain
            ``{options}``; multi-label questions must contain ``{label}``.
        instruction: Optional text put before the question (e.g. the meaning of each grade).
        multi_label: ``False``: exactly one label per case, scores are a distribution over labels.
            ``True``: any subset; one independent yes/no question per label.
        yes_verbalizer: Multi-label only: the answer meaning "present".
        no_verbalizer: Multi-label only: the answer meaning "absent".
        description: Free text for humans (where the task comes from).

    Raises:
        UsageError: Empty or duplicated labels or verbalizers, a verbalizer count that differs from
            the label count, a single-label task with fewer than two labels, a question without
            the placeholder its mode needs, or a missing/unknown/mistyped field. One line naming the
            task and each offending entry (a ``ValueError``; :meth:`from_dict` and
            :meth:`from_json` raise ``InputFormatError`` naming the file instead).

    Example:
        >>> task = TaskSpec(name="demo", labels=("benign", "malignant"),
        ...                 question="Is it benign or malignant? Answer {options}.")
        >>> task.render_question()
        'Is it benign or malignant? Answer benign, malignant.'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Short identifier of the task.", min_length=1)
    labels: tuple[str, ...] = Field(description="Label names in score order.")
    verbalizers: tuple[str, ...] | None = Field(
        default=None, description="Answer text per label (defaults to the label names)."
    )
    question: str = Field(default="", description="Default question ('' = cases must bring one).")
    instruction: str = Field(default="", description="Text put before the question.")
    multi_label: bool = Field(default=False, description="One yes/no question per label.")
    yes_verbalizer: str = Field(default="yes", description="Multi-label answer for 'present'.")
    no_verbalizer: str = Field(default="no", description="Multi-label answer for 'absent'.")
    description: str = Field(default="", description="Free text for humans.")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:  # pydantic's multi-line dump -> one documented line
            raise UsageError(f"{_INVALID}{_describe_errors(err)}") from None

    @model_validator(mode="after")
    def _validate(self) -> TaskSpec:
        _check_names(self.labels, "labels", self.name)
        if self.verbalizers is None:
            object.__setattr__(self, "verbalizers", tuple(self.labels))
        verbalizers = self.verbalizers or ()
        _check_names(verbalizers, "verbalizers", self.name)
        if len(verbalizers) != len(self.labels):
            raise ValueError(
                f"task {self.name!r}: verbalizers has {len(verbalizers)} entries but labels has "
                f"{len(self.labels)}; give exactly one verbalizer per label, in label order"
            )
        if self.multi_label:
            _check_names((self.yes_verbalizer, self.no_verbalizer), "yes/no verbalizers", self.name)
            if self.question and LABEL_PLACEHOLDER not in self.question:
                raise ValueError(
                    f"task {self.name!r} is multi-label, so its question {self.question!r} must "
                    f"contain {LABEL_PLACEHOLDER} (one yes/no question is asked per label)"
                )
        else:
            if len(self.labels) < 2:
                raise ValueError(
                    f"task {self.name!r}: a single-label task needs at least 2 labels, got "
                    f"{list(self.labels)}"
                )
            if LABEL_PLACEHOLDER in self.question or LABEL_PLACEHOLDER in self.instruction:
                raise ValueError(
                    f"task {self.name!r}: {LABEL_PLACEHOLDER} is only meaningful in multi-label "
                    "questions; use {options} to list the answers of a single-label task"
                )
        return self

    # Typed accessors (``verbalizers`` is filled in by the validator, never None afterwards).

    @property
    def answer_texts(self) -> tuple[str, ...]:
        """The verbalizers, in label order (never ``None``)."""
        return tuple(self.verbalizers or self.labels)

    @property
    def n_labels(self) -> int:
        """Number of labels."""
        return len(self.labels)

    def label_index(self, name: str) -> int:
        """Index of a label name in :attr:`labels`.

        Args:
            name: A label name exactly as listed in :attr:`labels`.

        Returns:
            Its position.

        Raises:
            KeyError: The name is not a label of this task; the message lists the labels.
        """
        try:
            return self.labels.index(name)
        except ValueError:
            raise KeyError(
                f"{name!r} is not a label of task {self.name!r}; labels are {list(self.labels)}"
            ) from None

    def render_question(self, question: str = "", label_index: int | None = None) -> str:
        """The instruction and question text the reader asks, placeholders filled in.

        Args:
            question: The case's own question; ``""`` means the task's default question.
            label_index: Multi-label tasks: which label the yes/no question is about (required).

        Returns:
            ``instruction + "\\n" + question`` (just the question without an instruction).

        Raises:
            ValueError: Neither the case nor the task has a question, ``label_index`` is missing
                or out of range for a multi-label task, or a multi-label question lacks
                ``{label}``.
        """
        text = question.strip() or self.question
        if not text:
            raise ValueError(
                f"task {self.name!r} has no default question and the case brings none; give the "
                "case a question (closed VQA) or set TaskSpec.question"
            )
        if self.multi_label:
            if label_index is None or not 0 <= label_index < self.n_labels:
                raise ValueError(
                    f"task {self.name!r} is multi-label: render_question needs label_index in "
                    f"[0, {self.n_labels}), got {label_index!r}"
                )
            if LABEL_PLACEHOLDER not in text:
                raise ValueError(
                    f"multi-label task {self.name!r}: question {text!r} has no {LABEL_PLACEHOLDER}; "
                    "a per-label yes/no question needs it"
                )
            text = text.replace(LABEL_PLACEHOLDER, self.answer_texts[label_index])
        elif label_index is not None:
            raise ValueError(
                f"task {self.name!r} is single-label: label_index must be None, got {label_index}"
            )
        options = (
            f"{self.yes_verbalizer}, {self.no_verbalizer}"
            if self.multi_label
            else ", ".join(self.answer_texts)
        )
        parts = [self.instruction.strip(), text.strip()]
        rendered = "\n".join(part for part in parts if part)
        return rendered.replace(OPTIONS_PLACEHOLDER, options)

    # Persistence.

    def to_json(self, path: str | Path) -> Path:
        """Write the task as JSON (atomically: temp file + rename).

        Args:
            path: Target file.

        Returns:
            The path written.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return target

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict that :meth:`from_dict` reads back."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, record: dict[str, Any], *, source: str = "<dict>") -> TaskSpec:
        """Build a task from a dict (the JSON layout), naming ``source`` in errors.

        Raises:
            ValueError: Unknown or missing fields, or any validation error of the task, as one
                line naming ``source`` and each offending field (e.g. ``invalid task in
                task.json: missing field 'name' (required: name, labels)``).
        """
        try:
            return cls(**record)  # through __init__: one UsageError line, re-raised naming the source
        except UsageError as err:
            raise InputFormatError(f"invalid task in {source}: {str(err).removeprefix(_INVALID)}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> TaskSpec:
        """Load a task written by :meth:`to_json` (or by hand).

        Args:
            path: A JSON file with the fields of :class:`TaskSpec`.

        Returns:
            The validated task.

        Raises:
            FileNotFoundError: The file does not exist.
            InputFormatError: The file is not UTF-8 JSON or does not describe a valid task (a
                ``ValueError``).

        Example:
            >>> import tempfile, os
            >>> path = get_task("retinamnist").to_json(os.path.join(tempfile.mkdtemp(), "t.json"))
            >>> TaskSpec.from_json(path) == get_task("retinamnist")
            True
        """
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"task file not found: {file}")
        try:
            # utf-8-sig: a BOM (Notepad, Excel) is accepted, as by the KB and cases loaders.
            record = json.loads(file.read_bytes().decode("utf-8-sig"))
        except UnicodeDecodeError as err:
            raise InputFormatError(f"task file {file} is not valid UTF-8 ({err.reason} at byte {err.start}); save it as UTF-8") from err
        except json.JSONDecodeError as err:
            raise InputFormatError(f"task file {file} is not valid JSON: {err}") from err
        if not isinstance(record, dict):
            raise InputFormatError(f"task file {file} must hold a JSON object, got {type(record).__name__}")
        return cls.from_dict(record, source=str(file))




_INVALID = "invalid TaskSpec: "


def _describe_errors(err: ValidationError) -> str:
    """A pydantic error as one line per offending field, joined by ``"; "`` (no pydantic dump)."""
    fields = TaskSpec.model_fields
    required = [name for name, info in fields.items() if info.is_required()]
    parts = []
    for error in err.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        kind = error["type"]
        if kind == "missing":
            parts.append(f"missing field {where!r} (required: {', '.join(required)})")
        elif kind == "extra_forbidden":
            parts.append(f"unknown field {where!r} (known fields: {', '.join(fields)})")
        elif kind == "value_error":
            # Our own validator's message already names the task and the fix.
            parts.append(str(error["msg"]).removeprefix("Value error, "))
        else:
            parts.append(f"field {where!r}: {error['msg']} (got {error.get('input')!r})")
    return "; ".join(parts)


_CHEST_FINDINGS = (
    "atelectasis",
    "cardiomegaly",
    "effusion",
    "infiltration",
    "mass",
    "nodule",
    "pneumonia",
    "pneumothorax",
    "consolidation",
    "edema",
    "emphysema",
    "fibrosis",
    "pleural thickening",
    "hernia",
)

_BUILTIN_TASKS: dict[str, TaskSpec] = {
    task.name: task
    for task in (
        TaskSpec(
            name="retinamnist",
            labels=("0", "1", "2", "3", "4"),
            instruction=(
                "Diabetic retinopathy grades: 0 = no retinopathy, 1 = mild, 2 = moderate, "
                "3 = severe non-proliferative, 4 = proliferative retinopathy."
            ),
            question=(
                "What is the diabetic retinopathy grade of this fundus photograph? "
                "Answer with one of {options}."
            ),
            description="RetinaMNIST (DeepDRiD fundus photographs), 5-level DR grade.",
        ),
        TaskSpec(
            name="dermamnist",
            labels=(
                "actinic keratosis",
                "basal cell carcinoma",
                "benign keratosis",
                "dermatofibroma",
                "melanoma",
                "melanocytic nevus",
                "vascular lesion",
            ),
            question=(
                "Which type of skin lesion does this dermatoscopic image show? "
                "Answer with one of: {options}."
            ),
            description="DermaMNIST (HAM10000), 7 skin-lesion types in MedMNIST index order.",
        ),
        TaskSpec(
            name="breastmnist",
            labels=("malignant", "benign"),
            verbalizers=("yes", "no"),
            question="Is the lesion in this breast ultrasound image malignant? Answer yes or no.",
            description="BreastMNIST; MedMNIST index 0 = malignant, 1 = normal or benign.",
        ),
        TaskSpec(
            name="closed_vqa",
            labels=("yes", "no"),
            instruction="Answer the question about the image with yes or no.",
            description="Closed (yes/no) visual question answering; each case brings its question.",
        ),
        TaskSpec(
            name="chestmnist",
            labels=tuple(finding.replace(" ", "_") for finding in _CHEST_FINDINGS),
            verbalizers=_CHEST_FINDINGS,
            question="Does this chest X-ray show {label}? Answer yes or no.",
            multi_label=True,
            description="ChestMNIST (NIH ChestX-ray14), 14 findings, multi-label.",
        ),
    )
}


def list_tasks() -> list[str]:
    """Names of the built-in tasks, sorted."""
    return sorted(_BUILTIN_TASKS)


def get_task(name_or_path: str | Path) -> TaskSpec:
    """A built-in task by name, or a task JSON file by path.

    Args:
        name_or_path: One of :func:`list_tasks` (case-insensitive), or a path to a ``.json`` file
            written by :meth:`TaskSpec.to_json`.

    Returns:
        The task (built-ins are immutable, so the shared instance is returned).

    Raises:
        KeyError: Not a built-in name and not an existing ``.json`` file; the message lists the
            built-ins.

    Example:
        >>> get_task("RetinaMNIST").labels
        ('0', '1', '2', '3', '4')
    """
    key = str(name_or_path)
    builtin = _BUILTIN_TASKS.get(key.strip().lower())
    if builtin is not None:
        return builtin
    path = Path(key)
    if path.suffix.lower() == ".json" and path.is_file():
        return TaskSpec.from_json(path)
    raise KeyError(
        f"unknown task {key!r}; built-in tasks are {list_tasks()}, or pass the path of a task "
        "JSON file (TaskSpec.to_json) or build a TaskSpec yourself"
    )
