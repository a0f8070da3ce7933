"""``python -m napari_tessera.demo IMAGE [LABELS]``: open an image (and labels) in napari with
the Tessera Segment and Train widgets docked."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import TesseraError

USAGE = "usage: python -m napari_tessera.demo IMAGE [LABELS]"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or len(argv) > 2 or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv or len(argv) > 2 else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from .images import read_image

    try:  # read before opening a window: a bad path is one line, not an empty viewer
        image, axes = read_image(argv[0])
        labels = read_image(argv[1])[0] if len(argv) > 1 else None
    except TesseraError as err:
        print(f"napari_tessera.demo: {err}", file=sys.stderr)
        return 2

    import napari  # GUI only: imported here, never by the core

    name = Path(argv[0]).stem
    viewer = napari.Viewer(title="Tessera")
    rgb = bool(axes and axes.endswith("C") and image.shape[-1] in (3, 4))
    layer = viewer.add_image(image, name=name, colormap=None if rgb else "gray", rgb=rgb)
    if labels is not None:
        # named as the Segment widget names its output, so segmenting again updates it
        viewer.add_labels(labels, name=f"{name} labels", opacity=0.6)
    seg_dock, segment = viewer.window.add_plugin_dock_widget("napari-tessera", "Segment")
    viewer.window.add_plugin_dock_widget("napari-tessera", "Train", tabify=True)
    segment.image.value = layer
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, seg_dock.raise_)  # once shown: Segment in front, Train the other tab
    QTimer.singleShot(0, viewer.reset_view)  # fit the image into the canvas left by the docks
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
