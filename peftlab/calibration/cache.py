"""The on-disk cache of calibration statistics, safe under concurrent runs.

An entry is a folder ``<root>/<key>/`` with one safetensors file per layer and
``info.json`` (the statistic's record). The key is a digest over the model's
weights, the calibration batches, the layers, the statistic and its parameters,
and the number of samples, so runs of a sweep that differ in anything else
(seed of the adapter init, learning rate, a CorDA rank, ...) share one entry.

The root is ``$PEFTLAB_CACHE_DIR/calibration``, else ``~/.cache/peftlab/calibration``,
next to the tokenization cache. A run computing an entry holds an exclusive
lock on ``<key>.lock``; another run asking for the same key waits for it and
then reads the finished entry. Files are written into a temporary folder that
is renamed into place, so a reader sees a whole entry or none.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from peftlab.data.tokenize import default_cache_root

CACHE_FORMAT_VERSION = 1
INFO_FILE = "info.json"


def cache_root() -> Path:
    return default_cache_root().parent / "calibration"


def model_fingerprint(model: nn.Module) -> str:
    """A digest of the model's class and every parameter and buffer (names, dtypes, values)."""
    digest = hashlib.blake2b(type(model).__name__.encode(), digest_size=16)
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_fingerprint(batches: Sequence[dict[str, Tensor]]) -> str:
    """A digest of the calibration batches as the model sees them (ids, masks, labels)."""
    digest = hashlib.blake2b(digest_size=16)
    for batch in batches:
        for key in sorted(batch):
            digest.update(f"{key}:{tuple(batch[key].shape)}".encode())
            digest.update(batch[key].cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(model_fp: str, data_fp: str, layers: Sequence[str], statistic: str, params: dict[str, Any],
              num_samples: int) -> str:
    parts = {"format": CACHE_FORMAT_VERSION, "model": model_fp, "data": data_fp, "layers": list(layers),
             "statistic": statistic, "params": params, "num_samples": num_samples, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@contextlib.contextmanager
def locked(root: Path, key: str) -> Iterator[None]:
    """Hold the exclusive lock of one key (blocks while another process computes it)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Entry:
    """One cache folder: per-layer tensors and the statistic's record."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.info: dict[str, Any] = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
        self.files: dict[str, str] = self.info.pop("_files")

    def load(self, name: str) -> dict[str, Tensor]:
        source = self.info.get("source", {}).get(name, name)
        return load_file(str(self.folder / self.files.get(name, self.files[source])))


def read(root: Path, key: str) -> Entry | None:
    """The finished entry of ``key``, or None (a damaged one is removed and recomputed)."""
    folder = root / key
    if not (folder / INFO_FILE).is_file():
        return None
    try:
        return Entry(folder)
    except (OSError, ValueError, KeyError):
        shutil.rmtree(folder, ignore_errors=True)
        return None


class Writer:
    """Collects one entry in a temporary folder: ``sink`` writes each layer as it comes."""

    def __init__(self, root: Path, key: str):
        self.root, self.key = root, key
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=root))
        self.files: dict[str, str] = {}

    def sink(self, name: str, tensors: dict[str, Tensor]) -> None:
        file = f"{len(self.files)}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(self.tmp / file))
        self.files[name] = file

    def finish(self, info: dict[str, Any]) -> Entry:
        (self.tmp / INFO_FILE).write_text(json.dumps({**info, "_files": self.files}), encoding="utf-8")
        final = self.root / self.key
        shutil.rmtree(final, ignore_errors=True)  # a damaged entry (read() said so)
        os.rename(self.tmp, final)
        return Entry(final)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
