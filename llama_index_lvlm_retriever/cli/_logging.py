"""Log lines that leave progress bars intact: a logging handler writing through ``tqdm.write``.

A plain ``StreamHandler`` writes its line after the bar's carriage-return-redrawn text, so the
message is glued to a half-drawn bar and the bar is drawn again below it. ``tqdm.write`` clears
the bars on the stream, prints the line, and redraws them.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["LOG_FORMAT", "TqdmLoggingHandler", "configure_logging"]

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


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


def configure_logging(verbose: bool) -> None:
    """Root logging for one CLI run: INFO (DEBUG with ``verbose``) through :class:`TqdmLoggingHandler`.

    It is ``logging.basicConfig``, so it changes nothing when the root logger already has handlers
    (an embedding application or pytest configured logging).
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=LOG_FORMAT,
        handlers=[TqdmLoggingHandler(sys.stderr)],
    )
