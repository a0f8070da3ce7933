"""``python -m napari_tessera.demo IMAGE [LABELS]``: open an image (and labels) in napari."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import napari  # GUI only: imported here, never by the core

    from .io import read_image

    viewer = napari.Viewer(title="Tessera")
    image, _ = read_image(argv[0])
    viewer.add_image(image, name="sample", colormap="gray")
    if len(argv) > 1:
        labels, _ = read_image(argv[1])
        viewer.add_labels(labels, name="sample labels")
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
