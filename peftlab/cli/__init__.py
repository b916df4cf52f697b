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
    """Console-script entry: user mistakes and storage failures become one line and exit code 2.

    SIGTERM interrupts any command like Ctrl-C, so what it was writing is cleaned
    up (``train`` defers both signals to its next step boundary instead).
    """
    from peftlab.errors import storage_problem
    from peftlab.stopping import sigterm_raises

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        with sigterm_raises():
            app()
    except UserError as exc:
        _say(f"error: {exc}")
        sys.exit(2)
    except OSError as exc:
        message = storage_problem(exc)
        if message is None:
            raise
        _say(f"error: {message}")
        sys.exit(2)
    except KeyboardInterrupt:
        _say("interrupted")
        sys.exit(130)


def _say(line: str) -> None:
    """A line to stderr; under a launcher of several processes, from the first one only."""
    from peftlab.processes import launched_rank

    if launched_rank() == 0:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    main()
