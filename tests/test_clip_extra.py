"""The ``clip`` extra as the README installs it: pip's resolver keeps the user's torch.

Runs ``pip install --dry-run --report`` (nothing is installed) on the checkout; skips when the
package index cannot be reached (an offline machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _clip_extra() -> list[Requirement]:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(r) for r in project["optional-dependencies"]["clip"]]


def test_the_extra_lists_no_torch_and_a_setuptools_with_pkg_resources() -> None:
    names = {r.name.lower(): r for r in _clip_extra()}
    assert not {"torch", "torchvision"} & set(names)  # either could replace the user's torch build
    setuptools = names["setuptools"]
    # openai-clip runs `from pkg_resources import packaging`; setuptools 81 dropped pkg_resources.
    assert setuptools.specifier.contains("80.9.0") and not setuptools.specifier.contains("81.0.0")
    assert "openai-clip" in names and "llama-index-embeddings-clip" in names


def _dry_run(tmp_path: Path, *requirements: str) -> tuple[subprocess.CompletedProcess[str], dict | None]:
    report = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
         "--report", str(report), *requirements],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    return run, (json.loads(report.read_text()) if run.returncode == 0 and report.is_file() else None)


@pytest.fixture(scope="module")
def index_reachable(tmp_path_factory: pytest.TempPathFactory) -> None:
    run, _ = _dry_run(tmp_path_factory.mktemp("probe"), "--no-deps", "openai-clip")
    if run.returncode != 0:
        pytest.skip(f"the package index is unreachable, pip cannot resolve openai-clip: {run.stderr.strip()[-300:]}")


def _installed_torch() -> str:
    torch = pytest.importorskip("torch", reason="the clip extra is installed beside an existing torch")
    return torch.__version__


def _would_install(report: dict) -> dict[str, str]:
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}


def test_installing_the_extra_changes_no_torch(index_reachable: None, tmp_path: Path) -> None:
    _installed_torch()
    run, report = _dry_run(tmp_path, ".[clip]")
    assert report is not None, run.stderr
    planned = _would_install(report)
    assert "torch" not in planned and "torchvision" not in planned, planned
    _assert_clip_importable(planned)


def _assert_clip_importable(planned: dict[str, str]) -> None:
    """After the planned install, ``import clip`` finds pkg_resources (a setuptools before 81)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        setuptools = planned.get("setuptools") or version("setuptools")
    except PackageNotFoundError:  # pragma: no cover - pip always brings one here
        setuptools = planned["setuptools"]
    assert Version(setuptools) < Version("81"), f"setuptools {setuptools} has no pkg_resources"


def test_the_readme_clip_line_keeps_torch_and_picks_a_matching_torchvision(index_reachable: None, tmp_path: Path) -> None:
    # The README's line: pip install ".[clip]" torchvision "torch==<the installed version>".
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    line = """pip install ".[clip]" torchvision "torch==$(python -c 'import torch; print(torch.__version__)')\""""
    assert line in readme
    version = _installed_torch()
    run, report = _dry_run(tmp_path, ".[clip]", "torchvision", f"torch=={version}")
    if report is None and "ResolutionImpossible" in run.stderr + run.stdout:
        pytest.skip(f"the index has no torchvision built for torch {version}: {run.stderr.strip()[-300:]}")
    assert report is not None, run.stderr
    planned = _would_install(report)
    assert "torch" not in planned, f"torch would change to {planned.get('torch')} (installed {version})"
    assert "torchvision" in planned
    _assert_clip_importable(planned)


@pytest.mark.parametrize(
    ("missing", "fix"),
    [
        ("pkg_resources", "setuptools>=80.9,<81"),
        ("torchvision", "the build that matches your torch"),
        ("clip", r"is not installed; pip install 'llama-index-lvlm-retriever\[clip\]'"),
        ("regex", r"`import clip` failed \(No module named 'regex'\)"),
    ],
)
def test_a_failed_import_clip_names_its_real_cause(missing: str, fix: str) -> None:
    from llama_index_lvlm_retriever.cli._loading import clip_import_hint

    with pytest.raises(ImportError, match=fix):
        raise ImportError(clip_import_hint(ModuleNotFoundError(f"No module named {missing!r}", name=missing)))
