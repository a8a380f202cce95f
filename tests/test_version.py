"""`eslbridge --version`: the version on stdout, from the one place it is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from setuptools.config.setupcfg import read_configuration

import eslbridge

ROOT = Path(__file__).resolve().parents[1]


def test_version_prints_the_package_version_on_stdout() -> None:
    done = subprocess.run([sys.executable, "-m", "eslbridge", "--version"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"eslbridge {eslbridge.__version__}\n", "")


def test_packaging_reads_the_version_from_the_package() -> None:
    assert read_configuration(ROOT / "setup.cfg")["metadata"]["version"] == eslbridge.__version__
    build_deb = (ROOT / "tools" / "build-deb").read_text()
    assert "eslbridge/__init__.py" in build_deb and not (ROOT / "debian" / "changelog").exists()
