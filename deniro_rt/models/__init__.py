"""Artifacts shipped inside the package (see default/deniro.json for how each was produced)."""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).parent / "default"
