"""Shared by the benchmark scripts: writing the printed figures to a JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_figures(out: dict[str, Any], path: str | None) -> None:
    """Write ``out`` as JSON to ``path`` (nothing when ``path`` is None or empty)."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2))
    print(f"\nfigures written to {path}")
