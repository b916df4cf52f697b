"""Reading the files of run and sweep folders strictly, saying what is wrong with a damaged one.

Every reader returns ``(value, problem)``. A missing file is no problem (a
running run has no summary.json yet): the value is None. A file that cannot be
read, is not valid JSON or YAML, or holds something other than an object (a
mapping) gives ``value`` None and a one-line ``problem`` that names the file,
so that a command can leave the run out with a note, or stop with that line,
instead of guessing what the run was or crashing. :class:`peftlab.runs.Run`
reads every run file through these (``Run.problem`` keeps the problem beside
the value); commands that must not guess ask it. No torch here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.layout import ADAPTER_CONFIG_FILE, META_FILE, SUMMARY_FILE

if TYPE_CHECKING:
    from peftlab.runs import Run

Problem = str | None
#: What a rebuilt model reads from adapter/ besides its config (the last two only when the method wrote them).
ADAPTER_WEIGHTS = ("adapter.safetensors", "initial.safetensors", "method_state.safetensors")


def read_text(path: Path) -> tuple[str | None, Problem]:
    """The file's text (UTF-8); None without a problem when it does not exist."""
    try:
        return Path(path).read_text(encoding="utf-8"), None
    except FileNotFoundError:
        return None, None
    except UnicodeDecodeError:
        return None, f"{path} is not UTF-8 text"
    except OSError as exc:
        return None, f"{path} cannot be read ({exc.strerror or exc})"


def read_json_object(path: Path) -> tuple[dict | None, Problem]:
    """The JSON object in ``path``; anything else (a list, a number, bad JSON) is a problem."""
    text, problem = read_text(path)
    if text is None:
        return None, problem
    try:
        data: Any = json.loads(text)
    except ValueError:
        return None, f"{path} is not valid JSON"
    if not isinstance(data, dict):
        return None, f"{path} is not a JSON object"
    return data, None


def read_yaml_mapping(path: Path) -> tuple[dict | None, Problem]:
    """The YAML mapping in ``path`` (an empty file or a list is a problem: a config is a mapping)."""
    text, problem = read_text(path)
    if text is None:
        return None, problem
    import yaml  # only when a run has a config: keeps ``import peftlab.compare`` light

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # a safe loader, C-accelerated when available
    try:
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError:
        return None, f"{path} is not valid YAML"
    if not isinstance(data, dict):
        return None, f"{path} is not a mapping"
    return data, None


def safetensors_problem(path: Path) -> Problem:
    """Why ``path`` is not a complete safetensors file (None when it is), from its header alone.

    The format is an 8-byte little-endian header length, a JSON header giving each
    tensor's byte range, then the data: a file shorter than the last range ends
    was cut short.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 0 or 8 + length > size:
            return f"{path} is truncated ({size:,} bytes, shorter than its own header)"
        try:
            header = json.loads(f.read(length))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, UnicodeDecodeError, TypeError, KeyError, IndexError, AttributeError):
            return f"{path} has a damaged header (not a safetensors file)"
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"{path} is truncated ({size:,} of {expected:,} bytes)"
    return None


def run_problem(run: Run) -> Problem:
    """One line naming a damaged meta.json or summary.json of ``run`` and the fix, or None."""
    for filename in (META_FILE, SUMMARY_FILE):
        problem = run.problem(filename)
        if problem is not None:
            return f"{problem}: the run folder is damaged; restore the file, or delete '{run.path}' and train it again"
    return None


def _retrain_hint(run: Run) -> str:
    overrides = " ".join(run.overrides())
    return f"train it again (peftlab train {overrides})" if overrides else "train it again with the same overrides"


def _no_adapter(run: Run) -> str:
    """Why a run has no adapter folder: still running, stopped early, or lost after finishing."""
    from peftlab.runs import is_stale

    status = run.status
    if status == "running" and not is_stale(run):
        return f"run '{run.label}' is still training (pid {run.meta.get('pid')}): wait until it completes"
    if status == "completed":
        return f"run '{run.label}' is completed but its adapter folder '{run.adapter_dir}' is missing: {_retrain_hint(run)}"
    return (f"run '{run.label}' has no adapter (status: {status}; it did not finish): resume it with "
            f"`peftlab train resume={run.label}` or pick another run")


def adapter_problem(run: Run) -> Problem:
    """One line naming what in ``adapter/`` cannot rebuild the trained model, and the fix; None when it can."""
    folder = run.adapter_dir
    if not folder.is_dir():
        return _no_adapter(run)
    info, problem = read_json_object(folder / ADAPTER_CONFIG_FILE)
    if problem is None and info is None:
        problem = f"{folder / ADAPTER_CONFIG_FILE} is missing"
    if problem is None and not (isinstance(info.get("config"), dict) and isinstance(info.get("labels"), list)):
        problem = f"{folder / ADAPTER_CONFIG_FILE} lacks the run's 'config' or 'labels'"
    for name in ADAPTER_WEIGHTS:
        if problem is not None:
            break
        weights = folder / name
        if weights.is_file():
            problem = safetensors_problem(weights)
        elif name == ADAPTER_WEIGHTS[0]:
            problem = f"{weights} is missing"
    if problem is not None:
        return f"{problem}: the run's adapter is damaged; {_retrain_hint(run)} or pick another run"
    return None


def not_a_result(run: Run) -> Problem:
    """Why the adapter in ``run`` is not the run's result (being written, or the run never completed); None if it is.

    ``adapter/`` is saved before the summary, so a run can fail after it (a full disk) and keep one;
    a resumed run keeps its old one until it completes again.
    """
    from peftlab.runs import is_live

    if not run.adapter_dir.is_dir():
        return None  # adapter_problem says why it is missing
    if is_live(run):
        pid = (run.owner() or {}).get("pid") or run.meta.get("pid") or "?"
        return f"run '{run.label}' is being written by process {pid}: wait until it completes"
    if run.status != "completed":
        return (f"run '{run.label}' did not complete (status: {run.status}): its adapter is not its result; "
                f"resume it with `peftlab train resume={run.label}` or pick another run")
    return None


def check_trained(run: Run) -> None:
    """UserError unless ``run`` completed and its files can rebuild its trained model (checked before anything heavy)."""
    from peftlab.errors import UserError

    problem = run_problem(run) or not_a_result(run) or adapter_problem(run)
    if problem is not None:
        raise UserError(problem)
