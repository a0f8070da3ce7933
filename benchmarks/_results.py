"""What every benchmark script does at the end: print the environment, write the JSON."""

from __future__ import annotations

import json


def report(rows: list, env: dict, args) -> None:
    """Print ``env``; with ``--json PATH``, write rows, environment and arguments there."""
    print("env", json.dumps(env))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "env": env, "args": vars(args)}, f, indent=1)
