"""Start-up cost of the CLI: ``lvlm-retriever --version`` and ``--help`` vs importing the package.

Prints the median wall time of each over a few runs, measured in this run, and the ratio to
``python -c "import llama_index_lvlm_retriever"`` (lazy: names are imported on first use). The
target is ``--version`` well under a second on an idle machine.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 5
_BIN = Path(sys.executable).parent


def _median_seconds(command: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    baseline = _median_seconds([sys.executable, "-c", "import llama_index_lvlm_retriever"])
    rows = [
        ("python -c 'import llama_index_lvlm_retriever'", baseline),
        ("lvlm-retriever --version", _median_seconds([str(_BIN / "lvlm-retriever"), "--version"])),
        ("lvlm-retriever --help", _median_seconds([str(_BIN / "lvlm-retriever"), "--help"])),
        ("import the whole public API", _median_seconds(
            [sys.executable, "-c", "from llama_index_lvlm_retriever import *"])),
    ]
    print(f"{'command':<48} {'median s':>9} {'ratio':>7}")
    for name, seconds in rows:
        print(f"{name:<48} {seconds:9.3f} {seconds / baseline:7.2f}")


if __name__ == "__main__":
    main()
