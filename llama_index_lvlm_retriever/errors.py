"""The package's exception types: one base class, one subclass per kind of user-fixable problem.

Every error a user can cause (a bad option, a malformed input file, an unreadable image, a
truncated or foreign saved artifact) is raised as one of these, with a one-line message naming the
file or item and what to do. Each subclass *also* subclasses the builtin it replaces, so code
written against the builtins keeps working: ``except ValueError`` still catches an
:class:`ImageLoadError` or a :class:`KBFormatError`.

The hierarchy, and the exit code the ``lvlm-retriever`` command gives for each::

    LVLMRetrieverError                          (any of ours)
    +-- UsageError(ValueError)                  exit 2: an option or argument to change
    |   +-- DeviceUnavailableError              the device asked for is not usable here
    +-- DataError(ValueError)                   exit 1: an input to fix or replace
        +-- InputFormatError                    a KB/cases/task/config file is malformed
        +-- ImageLoadError                      an image cannot be read or decoded
        +-- ArtifactError                       a saved artifact is corrupt, truncated or foreign
        |   +-- KBFormatError                   ... a persisted knowledge base
        |   +-- HeadFormatError                 ... a saved query head
        |   +-- FeedbackCacheError              ... a feedback cache
        |   +-- ChecksumMismatchError           ... a stored file whose SHA-256 differs from its manifest's
        |   +-- MissingStoreFileError           ... a file the manifest names is gone (also FileNotFoundError)
        +-- EncoderMismatchError                a KB loaded with another embedding model
        +-- KBMismatchError                     query heads used on a KB sharing < 50% of their training items
        +-- EmbeddingError                      the embedding model returned NaN/inf or mismatched embeddings
        +-- QueryError                          a query the retriever cannot search (NaN, empty)
    +-- StoreLockedError(BlockingIOError)       exit 1: another process is writing that folder
    +-- ConcurrentUpdateError(RuntimeError)     exit 1: the store changed since it was loaded
    +-- ServerVersionError(ConnectionError)     exit 1: the database server is older than supported

Missing files and folders are :class:`FileNotFoundError` (builtin, exit 1); a missing optional
dependency is :class:`ImportError` naming the extra to install (exit 1).

This module imports nothing, so any layer can use it.
"""

from __future__ import annotations

from typing import Any


class LVLMRetrieverError(Exception):
    """Base class of every error this package raises for something the user can fix."""


class UsageError(LVLMRetrieverError, ValueError):
    """An option or argument is invalid or conflicts with another; change the call (CLI exit 2)."""


class DeviceUnavailableError(UsageError):
    """The requested torch device does not exist in this installation (e.g. ``cuda`` on CPU-only torch)."""


class DataError(LVLMRetrieverError, ValueError):
    """An input (file, record, image, saved artifact) is unusable; fix or replace it (CLI exit 1)."""


class InputFormatError(DataError):
    """A knowledge-base, cases, task or config file is malformed; the message names file and line."""


class ImageLoadError(DataError):
    """An image could not be read; the message names the file and what to do."""


class ArtifactError(DataError):
    """A saved artifact (KB folder, head, feedback cache) is corrupt, truncated or inconsistent."""


class KBFormatError(ArtifactError):
    """A persisted knowledge-base folder cannot be read: rebuild it (``build-kb``/``persist``)."""


class HeadFormatError(ArtifactError):
    """A saved query-head folder cannot be read: re-save or retrain the head."""


class FeedbackCacheError(ArtifactError):
    """A feedback-cache folder cannot be read: delete it and collect the feedback again."""


class ChecksumMismatchError(ArtifactError):
    """A stored file does not match the SHA-256 its manifest recorded (changed, truncated or swapped)."""


class MissingStoreFileError(ArtifactError, FileNotFoundError):
    """A file a store's manifest names is missing (also a ``FileNotFoundError``)."""


class StoreLockedError(LVLMRetrieverError, BlockingIOError):
    """Another process is writing the same store folder (its ``.lock`` file); wait, or write elsewhere.

    Also an ``OSError``, so callers that handle file-system errors already report it (CLI exit 1).

    Attributes:
        folder: The locked folder.
        holder: ``"<pid> <host>"`` of the writer holding it (``"unknown"`` if it could not be read).
    """

    def __init__(self, folder: Any, holder: str) -> None:
        self.folder = folder
        self.holder = holder
        super().__init__(
            f"{folder} is locked by another writer (pid/host: {holder}); wait for that process to finish "
            f"(its lock file {folder}/.lock is released automatically when it exits), or write elsewhere"
        )


class ConcurrentUpdateError(LVLMRetrieverError, RuntimeError):
    """Another process changed a store folder after this process loaded it (a lost update refused).

    Raised by ``KnowledgeBase.persist`` (and before a database backend's rows are touched) when the
    folder's manifest is no longer the one the knowledge base was loaded from. Reload and redo the
    change, or make the whole load-modify-persist cycle under ``KnowledgeBase.updating``, which
    serialises writers.

    Attributes:
        folder: The store folder.
        loaded: The revision this process loaded.
        current: The revision the folder holds now.
    """

    def __init__(self, folder: Any, loaded: int, current: int) -> None:
        self.folder = folder
        self.loaded = loaded
        self.current = current
        super().__init__(
            f"{folder} changed after this process loaded it (revision {loaded}, now {current}): another process "
            "added, deleted or upserted items and persisted. Writing now would lose its changes, so nothing was "
            "written; reload the knowledge base and redo the change, or wrap load-change-persist in "
            "KnowledgeBase.updating(...), which waits for the other writer"
        )


class ServerVersionError(LVLMRetrieverError, ConnectionError):
    """A database server is older than the oldest version the backend supports; upgrade the server."""


class EncoderMismatchError(DataError):
    """A persisted knowledge base was loaded with an embedding model other than the one that built it."""


class KBMismatchError(DataError):
    """Query heads were trained on a knowledge base that shares under half its items with the one given.

    Retrain the heads on this knowledge base, or pass ``allow_other_kb=True`` (``--allow-other-kb``).
    """


class EmbeddingError(DataError):
    """The embedding model returned unusable embeddings (NaN or infinite values, or image and text
    embeddings of different sizes); the message names the item. Check the input and the model's dtype."""


class QueryError(DataError):
    """A query cannot be searched (e.g. its embedding has NaN or infinite values)."""


def describe_validation_error(err: Any) -> str:
    """A pydantic ``ValidationError`` as one line: ``field: reason (got value)`` per error, ``"; "``-joined.

    Duck-typed (``err.errors()``), so this module still imports nothing.
    """
    parts = []
    for error in err.errors(include_url=False):
        where = ".".join(str(part) for part in error.get("loc", ())) or "value"
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        if error.get("type") == "value_error":  # our own validators' messages name the field and the fix
            parts.append(message)
        else:
            parts.append(f"{where}: {message} (got {error.get('input')!r})")
    return "; ".join(parts)


__all__ = [
    "ArtifactError",
    "ChecksumMismatchError",
    "ConcurrentUpdateError",
    "DataError",
    "DeviceUnavailableError",
    "EmbeddingError",
    "EncoderMismatchError",
    "FeedbackCacheError",
    "HeadFormatError",
    "ImageLoadError",
    "InputFormatError",
    "KBFormatError",
    "KBMismatchError",
    "LVLMRetrieverError",
    "MissingStoreFileError",
    "QueryError",
    "ServerVersionError",
    "StoreLockedError",
    "UsageError",
    "describe_validation_error",
]
