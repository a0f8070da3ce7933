#!/usr/bin/env python
"""Draw docs/images/demo.png from the outputs of scripts/demo.sh (image, probability, labels)."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from skimage.color import label2rgb  # noqa: E402

root = Path(__file__).resolve().parents[1]
out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "out"
image = tifffile.imread(out_dir / "sample.tif").astype(np.float32)
prob = tifffile.imread(out_dir / "sample_prob.tif")[1]
labels = tifffile.imread(out_dir / "sample_labels.tif")
lo, hi = np.percentile(image, [1, 99.8])
shown = np.clip((image - lo) / (hi - lo), 0, 1)
crop = (slice(0, 256), slice(0, 256))
fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
axes[0].imshow(shown[crop], cmap="gray")
axes[0].set_title("synthetic nuclei (uint16)")
axes[1].imshow(prob[crop], cmap="magma", vmin=0, vmax=1)
axes[1].set_title("nucleus probability")
axes[2].imshow(label2rgb(labels[crop], image=shown[crop], bg_label=0, alpha=0.45))
axes[2].set_title(f"instances ({len(np.unique(labels)) - 1} in the whole image)")
for ax in axes:
    ax.axis("off")
fig.tight_layout(pad=1.5)
target = root / "docs" / "images" / "demo.png"
target.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(target, dpi=80)
print(f"wrote {target}")
