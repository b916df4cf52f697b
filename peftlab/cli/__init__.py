"""The ``peftlab`` command line.

One module per command. Nothing here imports torch at module level, so
``peftlab --help`` and the run-folder commands start fast; commands that train
or evaluate import it inside their function bodies.
"""

from __future__ import annotations

import os
import sys
import importlib
import pkgutil

from peftlab.cli.app import app
from peftlab.errors import UserError


def _register_commands() -> None:
    # Each module in this package (but this one and app) defines one command.
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("app", "common"):
            importlib.import_module(f"{__name__}.{info.name}")


_register_commands()


def main() -> None:
    """Console-script entry: user mistakes become one line on stderr and exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
