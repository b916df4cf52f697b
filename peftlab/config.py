"""Compose and validate experiment configs.

Configs are Hydra config trees: ``configs/config.yaml`` plus the groups model/,
dataset/, method/, regularizer/, optimizer/, trainer/. Users override with
Hydra syntax (``method=lora method.rank=16``) and can add their own config
folders with ``--config-dir`` (Hydra's search path).

Every user mistake becomes a :class:`~peftlab.errors.UserError` with one line
that names the bad value and the fix. No torch import here: the CLI composes
configs before deciding whether torch is needed at all.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from peftlab.errors import UserError, did_you_mean

GROUPS = ("task", "model", "dataset", "method", "regularizer", "optimizer", "trainer")
# Keys that describe a component for `peftlab ls`; they are not constructor arguments.
META_KEYS = ("description", "paper", "default_lr", "_target_")


def config_dir() -> Path:
    """The shipped config tree: inside the wheel, or configs/ at the repo root."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"peftlab's configs/ folder is missing next to {here}")


def search_path(extra_dirs: Sequence[str | Path] = ()) -> list[Path]:
    """Config folders in priority order: the user's own first, then the shipped tree."""
    return [Path(d).resolve() for d in extra_dirs] + [config_dir()]


# --------------------------------------------------------------------------- compose


def compose(overrides: Sequence[str] = (), extra_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """Compose ``config.yaml`` with Hydra overrides and validate the result.

    Raises ``UserError`` for unknown groups, options or keys (with a did-you-mean),
    malformed overrides and out-of-range values.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    overrides = list(overrides)
    dirs = search_path(extra_dirs)
    for d in dirs[:-1]:
        if not d.is_dir():
            raise UserError(f"config folder '{d}' does not exist: pass an existing folder to --config-dir")
    if dirs[:-1]:
        overrides = [f"hydra.searchpath=[{','.join('file://' + str(d) for d in dirs[:-1])}]"] + overrides
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(dirs[-1]), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(explain_hydra_error(exc, overrides, dirs)) from None
    finally:
        GlobalHydra.instance().clear()
    validate(cfg)
    return cfg


def explain_hydra_error(exc: Exception, overrides: Sequence[str], dirs: Sequence[Path]) -> str:
    """Turn a multi-line Hydra/OmegaConf error into one line with a fix."""
    text = str(exc)
    missing = re.search(r"Could not find '([\w/]+)/([^']+)'", text) or re.search(
        r"In '[^']*': Could not load '([\w/]+)/([^']+)'", text
    )
    if missing:
        group, option = missing.group(1), missing.group(2)
        choices = list_option_names(group, dirs)
        return (
            f"unknown {group} '{option}'{did_you_mean(option, choices)}; "
            f"choose one of: {', '.join(choices)} (or add configs/{group}/{option}.yaml)"
        )
    key = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if key:
        full_key = key.group(1)
        parent, _, leaf = full_key.rpartition(".")
        known = known_keys(parent, overrides, dirs)
        hint = did_you_mean(full_key, [f"{parent}.{k}" if parent else k for k in known])
        where = f"'{parent}'" if parent else "the root config"
        return (
            f"unknown config key '{full_key}'{hint}; keys of {where}: {', '.join(known) or '(none)'} "
            f"(prefix with + to add a new key)"
        )
    if "mismatched input" in text or "no viable alternative" in text or "extraneous input" in text:
        bad = next((o for o in overrides if o in text), " ".join(overrides))
        return f"cannot parse override '{bad}': use key=value, e.g. method.rank=16 or method=lora,pissa"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"invalid config: {first}"


def known_keys(parent: str, overrides: Sequence[str], dirs: Sequence[Path]) -> list[str]:
    """The keys that exist under ``parent`` once group choices in ``overrides`` are applied."""
    choices = {}
    for o in overrides:
        k, sep, v = o.partition("=")
        if sep and k in GROUPS and "," not in v:
            choices[k] = v
    root = OmegaConf.load(dirs[-1] / "config.yaml")
    defaults = {}
    for item in root.get("defaults", []):
        if isinstance(item, DictConfig):
            defaults.update({k: v for k, v in item.items()})
    if not parent:
        return sorted([k for k in root if k != "defaults"] + [g for g in GROUPS if g != "regularizer"])
    head, _, rest = parent.partition(".")
    if head in GROUPS:
        option = choices.get(head, defaults.get(head))
        if isinstance(option, str):
            node = load_option(head, option, dirs)
            if node is not None:
                node = OmegaConf.select(node, rest) if rest else node
                if isinstance(node, DictConfig):
                    return sorted(str(k) for k in node.keys() if k != "defaults")
    return []


# --------------------------------------------------------------------------- options


def list_option_names(group: str, dirs: Sequence[Path] | None = None) -> list[str]:
    """Option names of a config group across the search path."""
    names: set[str] = set()
    for d in dirs or search_path():
        folder = Path(d) / group
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def load_option(group: str, option: str, dirs: Sequence[Path] | None = None) -> DictConfig | None:
    """The raw YAML of one option, or None when no folder on the search path has it."""
    for d in dirs or search_path():
        path = Path(d) / group / f"{option}.yaml"
        if path.is_file():
            return OmegaConf.load(path)
    return None


def describe_options(group: str, dirs: Sequence[Path] | None = None) -> list[dict[str, str]]:
    """``[{name, description, paper}]`` for every option of a group (for ``peftlab ls``)."""
    rows = []
    for name in list_option_names(group, dirs):
        node = load_option(group, name, dirs)
        # Regularizer options nest their body under their own name (so several compose).
        if group == "regularizer" and node is not None and name in node:
            node = node[name]
        rows.append(
            {
                "name": name,
                "description": str(node.get("description", "")) if node is not None else "",
                "paper": str(node.get("paper", "") or "") if node is not None else "",
            }
        )
    return rows


# --------------------------------------------------------------------------- validate


@dataclasses.dataclass
class TrainerSchema:
    description: str = ""
    max_steps: int = 150
    batch_size: int = 32
    eval_batch_size: int = 32
    grad_accum: int = 1
    eval_every: int = 50
    log_every: int = 10
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    warmup_ratio: float = 0.06
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    cpu: bool = False
    deterministic: bool = True
    group_by_length: bool = True
    metric: str = "accuracy"
    select: str = "best"
    nonfinite: str = "fail"
    max_consecutive_skips: int = 10
    gradient_checkpointing: bool = False
    log_with: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RootSchema:
    seed: int = 0
    name: Any = None
    runs_dir: Any = None  # None: peftlab.runs.runs_root decides ($PEFTLAB_RUNS_DIR, else ./runs)
    resume: Any = None
    analysis: Any = None


# (path, predicate, what is allowed)
RANGE_RULES: list[tuple[str, Any, str]] = [
    ("trainer.max_steps", lambda v: v >= 0, "an integer >= 0 (0: evaluate the untrained model)"),
    ("trainer.batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.eval_batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.grad_accum", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.eval_every", lambda v: v >= 0, "an integer >= 0 (0: only at the end)"),
    ("trainer.log_every", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.checkpoint_every", lambda v: v >= 0, "an integer >= 0 (0: no checkpoints)"),
    ("trainer.keep_checkpoints", lambda v: v >= 1, "an integer >= 1"),
    ("trainer.warmup_ratio", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("trainer.schedule", lambda v: v in ("cosine", "linear", "constant"), "one of cosine, linear, constant"),
    ("trainer.max_grad_norm", lambda v: v >= 0, "a number >= 0 (0 disables clipping)"),
    ("trainer.precision", lambda v: v in ("fp32", "bf16", "fp16"), "one of fp32, bf16, fp16"),
    ("trainer.select", lambda v: v in ("best", "final"), "best (the best validation pass) or final (the last step)"),
    ("trainer.nonfinite", lambda v: v in ("fail", "skip"), "fail (stop the run) or skip (drop the step's update)"),
    ("trainer.max_consecutive_skips", lambda v: v >= 1, "an integer >= 1"),
    ("optimizer.lr", lambda v: v > 0, "a number > 0"),
    ("optimizer.weight_decay", lambda v: v >= 0, "a number >= 0"),
    ("seed", lambda v: v >= 0, "an integer >= 0"),
    ("analysis", lambda v: v in ("spectral",), "analysis=spectral, or analysis=null for none"),
]


def _typed(schema: type, node: DictConfig, prefix: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        first = str(exc).splitlines()[0]
        if "not in struct" in str(exc) or "Key '" in first and "not in" in first:
            leaf = key.rpartition(".")[2] if key else first
            fields = [f.name for f in dataclasses.fields(schema)]
            raise UserError(
                f"unknown config key '{prefix}{leaf}'{did_you_mean(leaf, fields)}; keys: {', '.join(fields)}"
            ) from None
        raise UserError(f"{prefix}{key}: {first}") from None
    return merged


def validate(cfg: DictConfig) -> None:
    """Type-check the fixed parts of the config and check value ranges.

    Component-specific parameters (method.rank, ...) are checked by the
    component's constructor, which knows its own rules.
    """
    with _unlocked(cfg):
        cfg.trainer = _typed(TrainerSchema, cfg.trainer, "trainer.")
        root_only = OmegaConf.create({k: cfg[k] for k in ("seed", "name", "runs_dir", "resume", "analysis") if k in cfg})
        root = _typed(RootSchema, root_only, "")
        for k in root:
            cfg[k] = root[k]
    if cfg.optimizer.get("lr") is None:
        # optimizer.lr=null means "the learning rate the method's YAML recommends".
        with _unlocked(cfg):
            cfg.optimizer.lr = float(cfg.method.get("default_lr") or 5e-4)
    for path, ok, allowed in RANGE_RULES:
        value = OmegaConf.select(cfg, path, default=None)
        if value is None:
            continue
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            raise UserError(f"{path}={value} is not allowed: use {allowed}")
    for group in ("task", "model", "dataset", "method", "optimizer"):
        if group in cfg and "_target_" not in cfg[group]:
            raise UserError(f"config group '{group}' has no _target_: name the class or function that builds it")
    if cfg.get("name"):
        from peftlab.runs import check_name

        check_name(str(cfg.name))  # before any data or model is loaded
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        key = sorted(missing)[0]
        raise UserError(f"'{key}' must be set: add {key}=... to the command line")


class _unlocked:
    """Temporarily lift Hydra's struct flag so validated values can be written back."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def __enter__(self):
        self.was = OmegaConf.is_struct(self.cfg)
        OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc):
        OmegaConf.set_struct(self.cfg, self.was)


# --------------------------------------------------------------------------- build


def params_of(node: DictConfig | dict) -> dict[str, Any]:
    """Constructor arguments of a component node: everything but the META_KEYS."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    return {k: v for k, v in node.items() if k not in META_KEYS}


def locate(target: str) -> Any:
    """Import ``package.module.Name`` and return ``Name``."""
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot import _target_ '{target}' ({exc}): check the module path in the YAML") from None


def build(node: DictConfig | dict, **extra: Any) -> Any:
    """Instantiate a component from its config node: ``_target_(**params, **extra)``."""
    target = node["_target_"]
    return locate(target)(**params_of(node), **extra)


def regularizer_nodes(cfg: DictConfig) -> dict[str, DictConfig]:
    """The selected regularizers by name (empty when none is selected)."""
    node = cfg.get("regularizer") or {}
    return {str(name): body for name, body in node.items()}


def default_config() -> DictConfig:
    """The embedded defaults, for diffs in ``peftlab show``."""
    return compose([])


def diff(base: Any, other: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Leaf-level differences ``(key, base_value, other_value)`` between two configs, as resolved values
    (a run stores its config resolved, so ``${task.metric}`` must compare as what it resolves to)."""
    base, other = _plain(base), _plain(other)
    out: list[tuple[str, Any, Any]] = []
    if isinstance(base, dict) and isinstance(other, dict):
        for k in sorted(set(base) | set(other), key=str):
            out += diff(base.get(k, "<absent>"), other.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    if base != other:
        out.append((prefix.rstrip("."), base, other))
    return out


def _plain(cfg: Any) -> Any:
    if not isinstance(cfg, DictConfig):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # e.g. a mandatory value still missing: compare as written
        return OmegaConf.to_container(cfg, resolve=False)


def choices(overrides: Sequence[str] = (), dirs: Sequence[Path] | None = None) -> dict[str, str]:
    """Which option of each config group a run uses: the last ``group=option`` override, else the default."""
    root = OmegaConf.load((list(dirs) if dirs else search_path())[-1] / "config.yaml")
    chosen: dict[str, str] = {}
    for item in root.get("defaults", []):
        if isinstance(item, DictConfig):
            for k, v in item.items():
                if k in GROUPS and isinstance(v, str):
                    chosen[k] = v
    for o in overrides:
        key, sep, value = o.partition("=")
        key = key.lstrip("+~")
        if sep and key in GROUPS:
            chosen[key] = value.strip("[]")
    return chosen
