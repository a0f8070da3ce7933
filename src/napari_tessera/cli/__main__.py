"""``python -m napari_tessera.cli``: the ``tessera`` command (e.g. under torchrun)."""

import sys

from . import main

sys.exit(main())
