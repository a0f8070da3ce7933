"""Models shipped inside the package."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = "nuclei.safetensors"


def default_model_path() -> Path | None:
    """The built-in fluorescence-nuclei model, or None if this installation has none."""
    path = Path(__file__).with_name(DEFAULT_MODEL)
    return path if path.is_file() else None
