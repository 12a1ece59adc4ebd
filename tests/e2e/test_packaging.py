"""The built distribution: one import namespace, a working CLI, and a client install with no torch.

Builds the wheel and the sdist from this checkout, installs the *wheel* (not the source tree)
into a fresh virtual environment with only the base dependencies, and checks what a user gets.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "selfreward_vlm"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist, and the wheel built from it (as `python -m build` does by default)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", out],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_wheel_installs_one_top_level_package(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = whl.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert whl.read(top_level).decode().split() == [NAMESPACE]
        (record,) = [n for n in names if n.endswith(".dist-info/RECORD")]
        paths = [line.split(",")[0] for line in whl.read(record).decode().splitlines() if line]
    roots = {p.split("/")[0] for p in paths if not p.split("/")[0].endswith(".dist-info")}
    assert roots == {NAMESPACE}
    for sub in ("core", "client", "service", "trainer", "tiny", "world"):
        assert f"{NAMESPACE}/{sub}/__init__.py" in paths
    assert f"{NAMESPACE}/service/engine/lm.py" in paths
    assert dists["wheel"].name.startswith("selfreward_vlm-")


def test_sdist_carries_the_folders(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as sdist:
        names = {"/".join(n.split("/")[1:]) for n in sdist.getnames()}
    for path in ("setup.py", "pyproject.toml", "client/__init__.py", "service/app.py"):
        assert path in names


def test_light_client_install_from_the_wheel(dists: dict[str, Path], tmp_path: Path) -> None:
    """A fresh venv, the wheel with its base dependencies only: the client imports, no torch."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run(
        [py, "-m", "pip", "install", "-q", str(dists["wheel"])],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    code = (
        "import sys, importlib.util as u\n"
        f"import {NAMESPACE}.client, {NAMESPACE}.core.schemas, {NAMESPACE}.client.cli\n"
        "assert u.find_spec('torch') is None, 'torch was installed'\n"
        "bad = [m for m in ('torch', 'transformers', 'open_clip', 'fastapi') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "for generic in ('core', 'client', 'service', 'trainer', 'world', 'tiny'):\n"
        "    assert u.find_spec(generic) is None, generic\n"
    )
    # Run from tmp_path so the checkout is not on sys.path: this is the installed wheel.
    subprocess.run([py, "-c", code], cwd=tmp_path, check=True, timeout=60)
    help_out = subprocess.run(
        [venv / "bin" / "selfreward", "--help"],
        cwd=tmp_path, check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "pairs" in help_out.stdout and "serve" in help_out.stdout
    # A command whose extra is missing names the extra to install instead of a traceback.
    serve = subprocess.run(
        [venv / "bin" / "selfreward", "serve"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert serve.returncode == 2 and "selfreward-vlm[service]" in serve.stderr
