"""The CLI's log output: lines that leave progress bars intact, and third-party loader noise kept out.

A plain ``StreamHandler`` writes its line after the bar's carriage-return-redrawn text, so the
message is glued to a half-drawn bar and the bar is drawn again below it. ``tqdm.write`` clears
the bars on the stream, prints the line, and redraws them.

Libraries we load print lines a user cannot act on: faiss logs which SIMD build it tried
(including a ``ModuleNotFoundError`` that is harmless), Milvus Lite's embedded gRPC server logs
``ERROR`` tracebacks for methods the client probes, transformers draws a "Loading weights" bar per
model. :func:`configure_logging` keeps those for ``--verbose`` (the debug log) and drops them
otherwise.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["LOG_FORMAT", "NOISY_LOGGERS", "ThirdPartyNoiseFilter", "TqdmLoggingHandler", "configure_logging"]

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

NOISY_LOGGERS: tuple[str, ...] = ("faiss", "grpc", "milvus_lite", "pymilvus", "httpx", "urllib3", "qdrant_client")
"""Logger names (and their children) whose records only ``--verbose`` shows: loader and
client-probe chatter of faiss, Milvus Lite / gRPC, Qdrant and HTTP clients."""


class TqdmLoggingHandler(logging.StreamHandler):
    """Write each record with ``tqdm.write`` to the handler's stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm  # imported here: the CLI's start-up stays free of it

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:  # as logging.StreamHandler.emit does
            raise
        except Exception:  # noqa: BLE001 - a handler must not raise; logging reports it
            self.handleError(record)


class ThirdPartyNoiseFilter(logging.Filter):
    """Drop records of :data:`NOISY_LOGGERS` (a handler filter; ``--verbose`` does not install it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        return not any(name == prefix or name.startswith(prefix + ".") for prefix in NOISY_LOGGERS)


def configure_logging(verbose: bool, *, quiet: bool = False, progress: bool = True) -> None:
    """Root logging and third-party progress bars for one CLI run.

    Our log lines go through :class:`TqdmLoggingHandler` at INFO (DEBUG with ``verbose``,
    WARNING with ``quiet``). Without ``verbose`` the :data:`NOISY_LOGGERS` are filtered out and
    transformers' "Loading weights" bars are hidden; with ``progress=False`` every Hugging Face
    bar is hidden too (our own bars follow the commands' ``show_progress``).

    The root handler is ``logging.basicConfig``'s, so it changes nothing when the root logger
    already has handlers (an embedding application or pytest configured logging).

    Args:
        verbose: Show debug messages and the third-party loader output.
        quiet: Show warnings and errors only (``verbose`` wins when both are set).
        progress: ``False`` hides every progress bar, third-party ones included.
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = TqdmLoggingHandler(sys.stderr)
    if not verbose:
        handler.addFilter(ThirdPartyNoiseFilter())
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=[handler])
    if not verbose or not progress:
        _hide_hugging_face_bars(hub_too=not progress)


def _hide_hugging_face_bars(*, hub_too: bool) -> None:
    """Hide transformers' bars ("Loading weights", "Writing model shards"); with ``hub_too`` also hub downloads."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # transformers is a core dependency; a broken install surfaces where it is used
        return
    hf_logging.disable_progress_bar()
    if hub_too:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
