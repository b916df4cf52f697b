"""Build the built-in dataset from Python standard-library docstrings.

Run ``python -m peftlab.data.generate_stdlib_docs`` to (re)write
``peftlab/data/stdlib_docs.jsonl``. Run it as a module: run as a file, the
sibling ``tokenize.py`` would shadow the standard library's ``tokenize``. The
file is frozen in the repo: training never runs this script, it only reads
the file (``builtin.load_stdlib_docs``).

Each example is the cleaned docstring of one public function, class or method,
labelled by the family of the module that defines it (text, math, files, net,
data, concurrency, time). Docstrings differ slightly between Python versions,
so the file is reproducible byte for byte only with the Python minor version
in ``GENERATED_WITH``; the procedure itself (module lists, cleaning, sampling,
split assignment) is fully deterministic.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import random
import re
import sys
from collections.abc import Iterator
from pathlib import Path

# Class order is part of the dataset's contract: label ids follow it. An entry is
# a module name, or "module:Class" to walk one class (the str methods are text).
FAMILIES: dict[str, tuple[str, ...]] = {
    "text": (
        "string",
        "re",
        "textwrap",
        "difflib",
        "unicodedata",
        "codecs",
        "html",
        "html.parser",
        "shlex",
        "locale",
        "reprlib",
        "builtins:str",
    ),
    "math": (
        "math",
        "cmath",
        "statistics",
        "decimal",
        "fractions",
        "random",
        "numbers",
        "operator",
    ),
    "files": (
        "os.path",
        "pathlib",
        "shutil",
        "glob",
        "fnmatch",
        "tempfile",
        "filecmp",
        "zipfile",
        "tarfile",
        "io",
        "gzip",
        "bz2",
        "lzma",
        "fileinput",
        "stat",
    ),
    "net": (
        "socket",
        "ssl",
        "http.client",
        "http.server",
        "http.cookies",
        "http.cookiejar",
        "urllib.request",
        "urllib.parse",
        "urllib.robotparser",
        "smtplib",
        "ftplib",
        "poplib",
        "imaplib",
        "ipaddress",
        "email.message",
        "email.utils",
        "socketserver",
    ),
    "data": (
        "json",
        "csv",
        "pickle",
        "sqlite3",
        "collections",
        "struct",
        "configparser",
        "xml.etree.ElementTree",
        "base64",
        "shelve",
        "dbm",
        "plistlib",
        "binascii",
        "array",
        "copyreg",
        "marshal",
    ),
    "concurrency": (
        "threading",
        "multiprocessing",
        "multiprocessing.pool",
        "multiprocessing.managers",
        "asyncio",
        "concurrent.futures",
        "queue",
        "subprocess",
        "selectors",
        "contextvars",
    ),
    # The smallest family: the pure-Python datetime (same API, its own wording)
    # and sched (events at given times) help it along.
    "time": ("time", "datetime", "_pydatetime", "calendar", "zoneinfo", "timeit", "sched"),
}
LABELS: tuple[str, ...] = tuple(FAMILIES)

SEED = 20240601  # fixed: sampling and split assignment depend only on this
PER_CLASS_CAP = 230  # larger families are cut to this; text and time have fewer
MIN_CHARS = 40  # shorter docstrings ("Return self.") carry no signal
MAX_CHARS = 400
MAX_PARAGRAPHS = 2
SPLIT_FRACTIONS = (("train", 0.70), ("validation", 0.15), ("test", 0.15))
SPLITS: tuple[str, ...] = tuple(name for name, _ in SPLIT_FRACTIONS)
GENERATED_WITH = (3, 11)  # Python minor version the frozen file was made with

OUTPUT = Path(__file__).parent / "stdlib_docs.jsonl"

# A leading "name(args) -> result" line is a signature, not prose: C functions
# often start their docstring with one. Dropping it keeps the text natural.
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)\s*(-+>.*)?$")


def clean_docstring(doc: str | None) -> str | None:
    """Return the first paragraphs of ``doc`` on one line, or None if too short.

    Leading signature lines and doctest paragraphs are dropped, whitespace is
    collapsed, at most ``MAX_PARAGRAPHS`` paragraphs are kept and the result is
    cut to ``MAX_CHARS`` (at a sentence end when one is close, else at a word).
    """
    if not doc:
        return None
    lines = inspect.cleandoc(doc).splitlines()
    while lines and (_SIGNATURE.match(lines[0].strip()) or not lines[0].strip()):
        lines.pop(0)
    paragraphs = [p for p in re.split(r"\n\s*\n", "\n".join(lines)) if p.strip()]
    prose = [p for p in paragraphs if not p.lstrip().startswith(">>>")]
    text = " ".join(" ".join(p.split()) for p in prose[:MAX_PARAGRAPHS])
    text = _truncate(text, MAX_CHARS)
    return text if len(text) >= MIN_CHARS else None


def _truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters at a sentence or word end."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    sentence_end = head.rfind(". ")
    if sentence_end >= limit // 2:
        return head[: sentence_end + 1]
    return head[: head.rfind(" ")].rstrip(" ,;:") if " " in head else head


def _is_documentable(obj: object) -> bool:
    """Functions (Python or C) and classes: the things with their own docstrings."""
    return inspect.isclass(obj) or inspect.isroutine(obj)


def _defined_in(obj: object, module) -> bool:
    """True if ``obj`` belongs to ``module`` (or its C accelerator, e.g. ``_json``)."""
    owner = getattr(obj, "__module__", None) or ""
    name = module.__name__
    return owner in (name, "_" + name.rsplit(".", 1)[-1]) or owner.startswith(name + ".")


def public_objects(module) -> Iterator[tuple[str, object]]:
    """Yield ``(qualified name, object)`` for the module's public API and class members.

    ``__all__`` is the module's own statement of its public API, so its entries
    count even when implemented elsewhere (``os.path`` re-exports ``genericpath``);
    without ``__all__`` only objects defined in the module count, so imports
    such as ``re``'s use of ``enum`` do not leak into the wrong family.
    """
    declared = getattr(module, "__all__", None)
    names = sorted(declared) if declared else sorted(n for n in dir(module) if not n.startswith("_"))
    for name in names:
        obj = getattr(module, name, None)
        if not _is_documentable(obj) or (not declared and not _defined_in(obj, module)):
            continue
        if inspect.isclass(obj):
            yield from public_objects_of_class(name, obj)
        else:
            yield name, obj


def public_objects_of_class(name: str, cls: type) -> Iterator[tuple[str, object]]:
    """Yield the class and its own public methods and properties (not inherited ones)."""
    yield name, cls
    for attr, member in sorted(vars(cls).items()):
        if attr.startswith("_"):
            continue
        # staticmethod/classmethod wrap the function that holds the doc.
        target = getattr(member, "__func__", member)
        if _is_documentable(target) or isinstance(member, property):
            yield f"{name}.{attr}", target


def import_module(name: str):
    """Import a stdlib module; ``_pydatetime`` also works before Python 3.12.

    Python 3.12 ships the pure-Python datetime as ``_pydatetime``; earlier
    versions keep it inside ``datetime.py``, shadowed by the C ``_datetime``, so
    the file is executed once more with the C module blocked.
    """
    try:
        return importlib.import_module(name)
    except ImportError:
        if name != "_pydatetime":
            raise
    import datetime

    spec = importlib.util.spec_from_file_location("_pydatetime", datetime.__file__)
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("_datetime")
    sys.modules["_datetime"] = None  # makes "from _datetime import *" fail
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["_datetime"]
        else:
            sys.modules["_datetime"] = saved
    return module


def entry_objects(entry: str) -> Iterator[tuple[str, object]]:
    """The documented objects of one ``FAMILIES`` entry ("module" or "module:Class")."""
    module_name, _, class_name = entry.partition(":")
    module = import_module(module_name)
    if not class_name:
        return public_objects(module)
    return public_objects_of_class(class_name, getattr(module, class_name))


def collect_family(entries: tuple[str, ...]) -> dict[str, list[str]]:
    """Map each entry to its sorted, de-duplicated cleaned docstrings."""
    by_module: dict[str, list[str]] = {}
    for entry in entries:
        texts = {clean_docstring(getattr(obj, "__doc__", None)) for _, obj in entry_objects(entry)}
        by_module[entry.replace(":", ".")] = sorted(t for t in texts if t)
    return by_module


def drop_duplicates(families: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    """Keep each text once: drop texts seen in two families, keep the first module's copy.

    A text shared by two families (a re-exported class, a generic "Return the
    file descriptor" method) would be an example with two right answers.
    """
    owners: dict[str, set[str]] = {}
    for family, by_module in families.items():
        for texts in by_module.values():
            for text in texts:
                owners.setdefault(text, set()).add(family)
    seen: set[str] = set()
    result: dict[str, dict[str, list[str]]] = {}
    for family, by_module in families.items():
        result[family] = {}
        for module_name, texts in by_module.items():
            kept = [t for t in texts if len(owners[t]) == 1 and t not in seen]
            seen.update(kept)
            result[family][module_name] = kept
    return result


def balanced_sample(by_module: dict[str, list[str]], cap: int, rng: random.Random) -> list[tuple[str, str]]:
    """Pick up to ``cap`` ``(module, text)`` pairs, round-robin over modules.

    Round-robin keeps a family from being just its largest module (``decimal``
    alone has hundreds of methods), so the class is about the topic, not one API.
    """
    queues = {m: rng.sample(texts, len(texts)) for m, texts in sorted(by_module.items())}
    picked: list[tuple[str, str]] = []
    while len(picked) < cap and any(queues.values()):
        for module_name, queue in queues.items():
            if queue and len(picked) < cap:
                picked.append((module_name, queue.pop()))
    return picked


def assign_splits(n: int, seed: int) -> list[str]:
    """Return the split name of each of ``n`` items: a seeded shuffle cut 70/15/15.

    The same ``(n, seed)`` always gives the same assignment (``random.Random``
    with an int seed is stable across Python versions and runs).
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_validation = round(n * SPLIT_FRACTIONS[1][1])
    n_test = round(n * SPLIT_FRACTIONS[2][1])
    n_train = n - n_validation - n_test
    names = ["train"] * n_train + ["validation"] * n_validation + ["test"] * n_test
    assignment = [""] * n
    for position, index in enumerate(order):
        assignment[index] = names[position]
    return assignment


def build_records(seed: int = SEED, cap: int = PER_CLASS_CAP) -> list[dict[str, str]]:
    """Collect, de-duplicate, sample and split every family; return sorted records."""
    families = drop_duplicates({family: collect_family(mods) for family, mods in FAMILIES.items()})
    records: list[dict[str, str]] = []
    for class_id, family in enumerate(LABELS):
        # One seed per class, derived from the global one, so classes are independent.
        rng = random.Random(seed + class_id)
        picked = sorted(balanced_sample(families[family], cap, rng), key=lambda mt: (mt[1], mt[0]))
        for (module_name, text), split in zip(picked, assign_splits(len(picked), seed + class_id)):
            records.append({"text": text, "label": family, "module": module_name, "split": split})
    records.sort(key=lambda r: (SPLITS.index(r["split"]), LABELS.index(r["label"]), r["module"], r["text"]))
    return records


def render(records: list[dict[str, str]]) -> str:
    """The file's exact content: one compact JSON object per line, keys in fixed order."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n" for r in records)


def main() -> None:
    """Write the frozen file and print its class counts per split."""
    if sys.version_info[:2] != GENERATED_WITH:
        print(
            f"note: running Python {sys.version_info[0]}.{sys.version_info[1]}; the committed file was made "
            f"with {GENERATED_WITH[0]}.{GENERATED_WITH[1]}, so docstrings may differ",
            file=sys.stderr,
        )
    records = build_records()
    OUTPUT.write_text(render(records), encoding="utf-8")
    print(f"wrote {len(records)} examples to {OUTPUT}")
    for split in SPLITS:
        counts = {
            label: sum(r["split"] == split and r["label"] == label for r in records) for label in LABELS
        }
        print(f"  {split:<10} " + " ".join(f"{k}={v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
