"""The library, the notebooks' jupytext sources, the tests and the benchmarks pass ruff
(pyflakes errors: unused imports, undefined names; syntax errors; see pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "mssdf", "notebooks",
                           "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"ruff found problems (run `ruff check --fix`):\n{proc.stdout}{proc.stderr}"
