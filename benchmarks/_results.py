"""What every benchmark script does at the end: print the environment, write the JSON."""

from __future__ import annotations

import json
import platform


def cpu_env() -> dict:
    """Python, torch and Tessera versions, the CPU and torch's thread count."""
    import torch

    from napari_tessera import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tessera": __version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }


def report(rows: list, env: dict, args) -> None:
    """Print ``env``; with ``--json PATH``, write rows, environment and arguments there."""
    print("env", json.dumps(env))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "env": env, "args": vars(args)}, f, indent=1)
