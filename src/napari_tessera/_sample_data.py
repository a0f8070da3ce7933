"""Sample data for napari's File > Open Sample menu (plain layer data tuples, no napari import)."""

from __future__ import annotations

from .synthetic import nuclei_2d, nuclei_stack


def nuclei_2d_sample():
    s = nuclei_2d((512, 512), seed=0)
    return [
        (s.image, {"name": "nuclei", "colormap": "gray"}, "image"),
    ]


def nuclei_stack_sample():
    s = nuclei_stack((8, 256, 256), seed=0)
    return [
        (s.image, {"name": "nuclei stack", "colormap": "gray"}, "image"),
    ]
