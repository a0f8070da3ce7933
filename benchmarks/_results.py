"""What every benchmark script does at the end: print the environment, write the JSON."""

from __future__ import annotations

import json
import os
import platform


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_env() -> dict:
    """Python, torch and Tessera versions, the CPU (model and the vector instructions torch
    uses: the same model name can hide AVX2-only and AVX-512 machines) and torch's threads."""
    import torch

    from napari_tessera import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tessera": __version__,
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),  # how freed memory is kept
    }


def report(rows: list, env: dict, args) -> None:
    """Print ``env``; with ``--json PATH``, write rows, environment and arguments there."""
    print("env", json.dumps(env))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "env": env, "args": vars(args)}, f, indent=1)


def settings(items: list[str]) -> dict:
    """``KEY=VALUE`` strings (``--set``) as TrainConfig overrides: ints, floats, booleans,
    else text."""

    def value(text: str):
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
        return {"true": True, "false": False}.get(text.lower(), text)

    return {k: value(v) for k, _, v in (item.partition("=") for item in items)}


def append_row(row: dict, jsonl: str | None, hide: tuple[str, ...] = ("env",)) -> None:
    """Print one run's row (without the ``hide`` keys) and append it whole to ``jsonl``."""
    print(json.dumps({k: v for k, v in row.items() if k not in hide}), flush=True)
    if jsonl:
        with open(jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
