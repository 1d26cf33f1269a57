"""Reading the text files the loaders take (KB and cases JSONL/CSV): UTF-8, BOM or not."""

from __future__ import annotations

import io
from pathlib import Path

from llama_index_lvlm_retriever.errors import InputFormatError


def read_utf8_text(path: Path) -> str:
    """Read a whole text file as UTF-8, dropping a leading byte-order mark.

    Every loader reads through here, so a BOM (which Excel and Notepad write) is accepted alike
    everywhere, and a file in another encoding gives one error that says what to do instead of
    a bare ``UnicodeDecodeError`` without the file name.

    Args:
        path: The file.

    Returns:
        Its text, newlines as stored.

    Raises:
        InputFormatError: The file is not valid UTF-8; the message names the file, the line and the
            byte, and says to save it as UTF-8.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        # err.object is what was decoded (the BOM already stripped), err.start an offset into it.
        line = err.object.count(b"\n", 0, err.start) + 1
        raise InputFormatError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{err.object[err.start]:02x}); the file is in "
            "another encoding (e.g. Latin-1 or Windows-1252). Save it as UTF-8 (a spreadsheet's "
            "'CSV UTF-8' format, or: iconv -f WINDOWS-1252 -t UTF-8 in > out) and load it again."
        ) from err


def text_lines(text: str) -> io.StringIO:
    """Iterate ``text`` line by line with universal newlines, as ``open(path)`` would."""
    return io.StringIO(text, newline=None)


def csv_source(text: str) -> io.StringIO:
    """A file-like for :mod:`csv` (``newline=""`` keeps quoted newlines inside their field)."""
    return io.StringIO(text, newline="")
