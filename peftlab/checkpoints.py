"""Resumable checkpoints: what training changes, verified before it is trusted.

A checkpoint is a folder ``checkpoints/step_NNNNNNN`` holding::

    adapter.safetensors       trained tensors (trainable parameters, adapters' buffers)
    initial.safetensors       initial values of adapters that rewrote their base (PiSSA, ...)
    method_state.safetensors  the method's own state, when it has one
    optimizer.pt              the optimizer's state
    rng.pt                    Python, NumPy and torch RNG states of every process of the run
    loop.json                 step, best validation point, counters of the loop, and a
                              fingerprint of the frozen weights, checked on resume
    manifest.json             size and SHA-256 of every file above; written last

The frozen base is not stored: it is rebuilt from its source, as at the start
of the run, so a LoRA checkpoint is the size of the adapter and its optimizer
state. A checkpoint is written into ``step_NNNNNNN.tmp`` and renamed, so a
folder with the final name is complete; the manifest catches what the rename
cannot (a disk that lost or damaged a file later). Resume takes the newest
checkpoint whose manifest holds and names any it had to skip.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peftlab import runs
from peftlab.errors import UserError
from peftlab.layout import CHECKPOINT_PREFIX
from peftlab.experiment import Experiment, frozen_fingerprint, read_trained, write_trained

PREFIX = CHECKPOINT_PREFIX
_NAME = re.compile(rf"^{PREFIX}(\d{{7,}})$")
LOOP_FILE = "loop.json"
MANIFEST_FILE = "manifest.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int

    @property
    def name(self) -> str:
        return self.path.name


def folder_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def listed(folder: Path) -> list[Checkpoint]:
    """The checkpoints in ``folder``, oldest first; anything not named ``step_<digits>`` is ignored."""
    found = []
    try:
        entries = list(Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        m = _NAME.match(entry.name)
        if m and entry.is_dir():
            found.append(Checkpoint(entry, int(m.group(1))))
    return sorted(found, key=lambda c: c.step)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def problem(checkpoint: Checkpoint) -> str | None:
    """What is wrong with a checkpoint (a missing, truncated or altered file), or None."""
    try:
        manifest = json.loads((checkpoint.path / MANIFEST_FILE).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} is missing or damaged"
    if LOOP_FILE not in files:
        return f"{MANIFEST_FILE} lists no {LOOP_FILE}"
    for name, expected in files.items():
        path = checkpoint.path / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != expected.get("bytes") or _sha256(path) != expected.get("sha256"):
            return f"{name} is damaged (its size or checksum differs from {MANIFEST_FILE})"
    return None


def newest_sound(folder: Path, warn: Any = None) -> Checkpoint | None:
    """The newest checkpoint that passes ``problem``; each skipped one is reported through ``warn``."""
    for checkpoint in reversed(listed(folder)):
        issue = problem(checkpoint)
        if issue is None:
            return checkpoint
        if warn is not None:
            warn(f"checkpoint {checkpoint.path} is unusable ({issue}): trying the previous one")
    return None


def rng_state() -> dict[str, Any]:
    """This process's random states (Python, NumPy, torch, CUDA)."""
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _torch_save(obj: Any, path: Path) -> None:
    # Serialised in memory, written by the run store: a full disk then says so (see runs.write_bytes).
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    runs.write_bytes(path, buffer.getvalue())


def save(folder: Path, step: int, exp: Experiment, optimizer: Any, loop: dict, fingerprint: str,
         rng_states: list[dict[str, Any]] | None = None) -> Checkpoint:
    """Write the checkpoint of ``step`` into ``folder`` (atomically; see the module docstring).

    ``rng_states`` holds each process's random states in rank order (this process's alone
    when None); the trained tensors and optimizer state are the same in every process.
    """
    final = Path(folder) / folder_name(step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _torch_save({"processes": rng_states or [rng_state()]}, tmp / RNG_FILE)
        write_trained(exp, tmp)
        _torch_save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        runs.atomic_write_json(tmp / LOOP_FILE, {"step": step, "frozen_fingerprint": fingerprint, **loop})
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        runs.atomic_write_json(tmp / MANIFEST_FILE, {"files": files})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (disk full, ...) leaves nothing behind
    return Checkpoint(final, step)


def load(checkpoint: Checkpoint, exp: Experiment, optimizer: Any, rank: int = 0, world: int = 1,
         warn: Any = None) -> dict:
    """Restore a checkpoint into the rebuilt experiment and optimizer; returns the loop state.

    Process ``rank`` of ``world`` takes its own random states back; a checkpoint written by
    another number of processes resumes, but not bit for bit, and ``warn`` says so.
    """
    path = checkpoint.path
    loop = json.loads((path / LOOP_FILE).read_text())
    if loop.get("frozen_fingerprint") not in (None, frozen_fingerprint(exp.model)):
        raise UserError(f"the frozen weights rebuilt to resume {path} differ from those the run trained on "
                        f"(were the model's files changed?): resume on the original model, or start a new run")
    try:
        read_trained(exp, path, f"checkpoint {path}")
        optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=False))
        stored = torch.load(path / RNG_FILE, weights_only=False)
        states = stored["processes"] if "processes" in stored else [stored]  # one process, before the list
        if len(states) != world and warn is not None and rank == 0:
            warn(f"{path} was written by {len(states)} process(es) and resumes in {world}: the run continues, "
                 f"but its random streams (dropout) differ from an uninterrupted run")
        _set_rng_state(states[rank % len(states)])
        return loop
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a checkpoint that passed its manifest but does not load
        raise UserError(f"checkpoint {path} does not load ({type(exc).__name__}: {exc}): "
                        f"delete it to resume from the previous one") from None


def prune(folder: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints; remove the rest and any leftover ``.tmp`` folder."""
    for old in listed(folder)[:-keep] if keep > 0 else listed(folder):
        shutil.rmtree(old.path, ignore_errors=True)
    for leftover in Path(folder).glob(f"{PREFIX}*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
