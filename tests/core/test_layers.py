"""The import layering, core <- service / client / world <- trainer <- the `selfreward` CLI, as
import-linter contracts (pyproject.toml [tool.importlinter]): the tree keeps them, and a planted
upward import, a trainer -> service import and a torch import in core each break one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
FOLDERS = ["core", "client", "service", "trainer", "tiny", "world"]


def lint(view: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(view)}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=view, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_tree_keeps_its_import_contracts() -> None:
    env = {**os.environ, "LINT_IMPORTS": LINT_IMPORTS}
    res = subprocess.run(
        ["bash", "scripts/lint_imports.sh"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def test_a_forbidden_import_breaks_a_contract(tmp_path: Path) -> None:
    """A copy of the namespace with three planted imports: each contract names its own."""
    pkg = tmp_path / "selfreward_vlm"
    pkg.mkdir()
    for f in (ROOT / "selfreward").iterdir():
        if f.suffix == ".py" or f.name == "py.typed":
            (pkg / f.name).symlink_to(f)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, pkg / folder, ignore=shutil.ignore_patterns("__pycache__"))
    plants = {
        "client/pairs.py": "from selfreward_vlm.trainer import config as _upward",
        "trainer/collator.py": "from selfreward_vlm.service.engine import lm as _sideways",
        "core/schemas.py": "import torch as _heavy",
    }
    for path, line in plants.items():
        with (pkg / path).open("a") as f:
            f.write(f"\n{line}  # noqa\n")
    res = lint(tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "3 broken" in res.stdout
    assert "selfreward_vlm.client is not allowed to import selfreward_vlm.trainer" in res.stdout
    assert "selfreward_vlm.trainer is not allowed to import selfreward_vlm.service" in res.stdout
    assert "selfreward_vlm.core is not allowed to import torch" in res.stdout
