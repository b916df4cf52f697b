"""What a training run shows while it runs: a progress bar on a terminal, plain lines elsewhere.

On a terminal, a rich bar with the loss, tokens/s and the best validation
metric. When stdout is a file or a pipe (SLURM, nohup, ``| tee``), a bar would
print nothing until the end, so one plain line is printed per logging interval
instead. ``quiet`` shows neither.
"""

from __future__ import annotations

import sys
from typing import Any


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


class Progress:
    """Shown state of one run: the step, the last logged record, the best validation point."""

    def __init__(self, total: int, done: int, metric: str, *, quiet: bool = False, terminal: bool | None = None):
        self.total, self.metric = total, metric
        self.record: dict | None = None
        self.best: dict | None = None
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.bar = None
        if not quiet and self.terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self.bar = Bar(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                           TextColumn("{task.fields[info]}"))
            self.task = self.bar.add_task("train", total=total, completed=done, info="")
        self.lines = not quiet and not self.terminal

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def _info(self) -> str:
        parts = []
        if self.record is not None:
            parts.append(f"loss {_fmt(self.record.get('loss'))}  {self.record.get('tokens_per_s', 0):.0f} tok/s")
        if self.best is not None and self.metric in self.best:
            parts.append(f"best val {self.metric} {_fmt(self.best[self.metric])}")
        return "  ".join(parts)

    def step(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def logged(self, step: int, record: dict) -> None:
        """A training record was written (once per ``trainer.log_every`` steps)."""
        self.record = record
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=self._info())
        elif self.lines:
            print(f"step {step}/{self.total}  {self._info()}  lr {record.get('lr', 0):.2e}", flush=True)

    def evaluated(self, step: int, best: dict | None) -> None:
        """A validation pass ended; ``best`` is the best point so far (the final pass included)."""
        self.best = best
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=self._info())
        elif self.lines and best is not None and self.metric in best:
            print(f"step {step}/{self.total}  validation: best {self.metric} {_fmt(best[self.metric])} "
                  f"(step {best.get('step')})", flush=True)
