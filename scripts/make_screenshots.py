"""Real screenshots of the Tessera widgets at work, for docs/user-guide.md.

Drives napari as a user would: opens the annotated sample, docks both widgets through the
plugin manifest, segments, trains from the painted annotations (live preview, loss curve),
segments again with the trained model, and saves window screenshots into docs/images/.

Needs a display; on a server run it under Xvfb:

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python scripts/make_screenshots.py

Options: --out DIR (default docs/images), --train-seconds S (default 45).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait(app, condition, timeout: float, step: float = 0.02) -> None:
    """Turn the Qt event loop until ``condition()`` holds (or fail after ``timeout`` s)."""
    t0 = time.perf_counter()
    while not condition():
        app.processEvents()
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"gave up after {timeout:.0f} s")
        time.sleep(step)


def settle(app, seconds: float = 0.5) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    p.add_argument("--train-seconds", type=float, default=45.0)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    import napari
    import numpy as np
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_tessera import UNet, UNetConfig, save_model
    from napari_tessera._widgets import _train
    from napari_tessera.models import default_model_path

    torch.manual_seed(0)
    viewer = napari.Viewer(title="Tessera", show=True)
    app = QApplication.instance()
    win = viewer.window._qt_window
    win.resize(1560, 1120)
    viewer.theme = "dark"

    def shot(name: str) -> None:
        settle(app, 0.6)
        path = args.out / name
        viewer.screenshot(str(path), canvas_only=False)
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")

    viewer.open_sample("napari-tessera", "nuclei-2d-annotated")
    image = viewer.layers["nuclei"]
    annotations = viewer.layers["nuclei annotations"]
    seg_dock, seg = viewer.window.add_plugin_dock_widget("napari-tessera", "Segment")
    train_dock, tr = viewer.window.add_plugin_dock_widget("napari-tessera", "Train", tabify=True)
    for dock in (seg_dock, train_dock):
        dock.setMinimumWidth(400)
    viewer.reset_view()

    # 1. the sample with its partial annotations, the Train widget showing the convention
    train_dock.raise_()
    tr.image.value = image
    tr.annotations.value = annotations
    viewer.layers.selection.active = annotations
    annotations.mode = "paint"
    annotations.selected_label = 2
    shot("annotations.png")

    # 2. segment with the built-in model (or, without one, a tiny untrained network)
    seg_dock.raise_()
    seg.image.value = image
    builtin = default_model_path()
    if builtin is not None:
        seg.model_source.value = "builtin"
        what = "built-in model"
    else:
        tiny = args.out.parent / ".random-model.safetensors"
        save_model(UNet(UNetConfig(base_channels=4, depth=2)), tiny)
        seg.model_source.value = "file"
        seg.model_file.value = tiny
        what = "untrained tiny network (no built-in model installed)"
    seg.output.value = "instances"
    seg.probabilities.value = True
    seg.run()
    wait(app, lambda: not seg.running, 600)
    print(f"segmented with the {what}: {seg.status.value}")
    viewer.layers["nuclei probability"].visible = False
    shot("segment-builtin.png")
    if builtin is None:
        tiny.unlink(missing_ok=True)
    for name in ("nuclei labels", "nuclei probability"):
        viewer.layers.remove(name)

    # 3. train on the painted annotations: live preview and loss curve
    train_dock.raise_()
    if builtin is not None:
        tr.start_from.value = "builtin"
    else:
        tr.start_from.value = "scratch"
        tr.base_channels.value = 8
        tr.depth.value = 3
    tr.limit_by.value = "time"
    tr.time_limit.value = int(args.train_seconds)
    viewer.dims.set_point(0, 0)
    tr.train()
    wait(app, lambda: len(tr.loss_curve.train) > 0, 120)
    wait(app, lambda: not tr.running or tr.progress.value >= 600, 600)
    shot("train-running.png")
    wait(app, lambda: not tr.running, 600)
    print(f"trained: {tr.status.value}")
    annotations.mode = "pan_zoom"
    shot("train-done.png")

    # 4. segment with the model just trained (offered to the Segment widget at once)
    viewer.layers.remove("nuclei preview")
    seg_dock.raise_()
    assert seg.model_source.value == "session"
    seg.output.value = "instances"
    seg.probabilities.value = False
    seg.run()
    wait(app, lambda: not seg.running, 600)
    print(f"segmented with the trained model: {seg.status.value}")
    annotations.visible = False
    shot("segment-trained.png")

    # 5. the same, zoomed in, to see the objects
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.zoom = camera.zoom * 2.5
    camera.center = (0, 160, 160)
    labels = viewer.layers["nuclei labels"]
    labels.contour = 0
    shot("segment-trained-zoom.png")

    n = len(np.unique(labels.data)) - 1
    print(f"{n} objects in 'nuclei labels'")
    _train.warmed_up.wait(10)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
