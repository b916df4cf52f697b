"""The accelerate training loop: one run, start to finish, into a run folder.

Per optimizer step: ``grad_accum`` micro-batches of task loss + method loss
terms + weighted regularizers, backward, ``method.on_after_backward``, gradient
clipping, ``method.on_before_optimizer_step``, AdamW step, LR schedule (linear
warmup, then cosine, linear or constant), ``method.on_after_optimizer_step``.
Validation every ``trainer.eval_every`` steps and at the end, test once at the
end. Host synchronisation happens only at logging, evaluation and checkpoint
intervals: losses and token counts accumulate on the device in between.

Checkpoints (accelerate ``save_state`` + the loop's own state) are written every
``trainer.checkpoint_every`` steps and when the run is interrupted, so
``peftlab train resume=RUN`` continues exactly where it stopped: the batch
order is a pure function of (seed, step) and the RNG state is restored.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from peftlab import runs
from peftlab.errors import UserError
from peftlab.evaluate import evaluate, make_loader
from peftlab.experiment import Experiment, build_experiment, count_parameters, save_adapter
from peftlab.regularizers.base import RegularizerContext

TRAINER_STATE = "trainer_state.json"


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base LR at a step: linear warmup, then the decay."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "linear":
            return 1.0 - progress
        return 1.0

    return factor


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, lengths: list[int] | None = None) -> list[list[int]]:
    """The full batches of one epoch, a pure function of (seed, epoch).

    With ``lengths``, examples are grouped by length to cut padding: shuffle,
    sort within mega-batches of 50 batches, cut into batches, shuffle the batch
    order (the grouping of Hugging Face's ``group_by_length``).
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    size = min(batch_size, n)
    if lengths is None:
        return [perm[i : i + size] for i in range(0, n - size + 1, size)]
    mega = size * 50
    batches = []
    for start in range(0, n, mega):
        group = sorted(perm[start : start + mega], key=lambda j: -lengths[j])
        batches += [group[i : i + size] for i in range(0, len(group) - size + 1, size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def batch_order(n: int, batch_size: int, seed: int, start: int, stop: int,
                lengths: list[int] | None = None) -> list[list[int]]:
    """Index lists of micro-batches ``start..stop-1`` across epochs.

    Depends only on its arguments, so a resumed run sees the batches it would have seen.
    """
    per_epoch = max(1, n // batch_size)
    epochs: dict[int, list[list[int]]] = {}
    order = []
    for b in range(start, stop):
        epoch, i = divmod(b, per_epoch)
        if epoch not in epochs:
            epochs[epoch] = epoch_batches(n, batch_size, seed, epoch, lengths)
        order.append(epochs[epoch][i])
    return order


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _Interrupted(Exception):
    """SIGTERM turned into an exception, so the run is checkpointed and marked interrupted."""


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise _Interrupted()


class Trainer:
    """Runs one experiment into one run folder."""

    def __init__(self, exp: Experiment, run: runs.Run, *, start_checkpoint: Path | None = None,
                 show_progress: bool = True):
        from accelerate import Accelerator

        self.exp, self.run, self.cfg = exp, run, exp.cfg
        t = self.cfg.trainer
        precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[t.precision]
        self.accelerator = Accelerator(cpu=bool(t.cpu), mixed_precision=precision, gradient_accumulation_steps=int(t.grad_accum))
        self.show_progress = show_progress and self.accelerator.is_main_process
        model = exp.model
        opt_cfg = self.cfg.optimizer
        self.base_lr = float(opt_cfg.lr)
        groups = exp.method.param_groups(model, self.base_lr, float(opt_cfg.get("weight_decay", 0.0)))
        from peftlab.config import locate, params_of

        opt_kwargs = {k: v for k, v in params_of(opt_cfg).items() if k not in ("lr", "weight_decay")}
        if "betas" in opt_kwargs:
            opt_kwargs["betas"] = tuple(opt_kwargs["betas"])
        optimizer = locate(opt_cfg._target_)(groups, lr=self.base_lr, **opt_kwargs)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        warmup = int(round(float(t.warmup_ratio) * int(t.max_steps)))
        self.lr_factor = lr_lambda(str(t.schedule), warmup, int(t.max_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer.optimizer, self.lr_factor)
        self.step = 0
        self.best: dict[str, Any] | None = None
        self.train_time = 0.0
        self.tokens_seen = 0
        if start_checkpoint is not None:
            self._load_checkpoint(start_checkpoint)

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self) -> None:
        t = self.cfg.trainer
        folder = self.run.checkpoints_dir / f"step_{self.step:07d}"
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.save_state(str(tmp))
        state = {"step": self.step, "best": self.best, "train_time_s": self.train_time, "tokens_seen": self.tokens_seen}
        (tmp / TRAINER_STATE).write_text(json.dumps(state))
        method_state = self.exp.method.state_dict()
        if method_state:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in method_state.items()}, str(tmp / "method_state.safetensors"))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        kept = sorted(p for p in self.run.checkpoints_dir.glob("step_*") if not p.name.endswith(".tmp"))
        for old in kept[: -int(t.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, folder: Path) -> None:
        self.accelerator.load_state(str(folder))
        state = json.loads((folder / TRAINER_STATE).read_text())
        self.step, self.best = int(state["step"]), state["best"]
        self.train_time, self.tokens_seen = float(state["train_time_s"]), int(state["tokens_seen"])
        method_file = folder / "method_state.safetensors"
        if method_file.is_file():
            from safetensors.torch import load_file

            self.exp.method.load_state_dict(load_file(str(method_file)))
        # The schedule is a pure function of the step: set it rather than store it.
        self.scheduler.last_epoch = self.step
        for group, base in zip(self.optimizer.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * self.lr_factor(self.step)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, split: str) -> dict[str, float]:
        t = self.cfg.trainer
        loader = self.accelerator.prepare(make_loader(self.exp.splits[split], self.exp.tokenizer, int(t.eval_batch_size)))
        return evaluate(self.model, loader, len(self.exp.labels), self.accelerator.device)

    def _log_eval(self, split: str, metrics: dict[str, float]) -> None:
        self.run.append_metrics({"step": self.step, "split": split, **metrics})
        key = str(self.cfg.trainer.metric)
        if split == "validation" and key in metrics:
            lower_better = "loss" in key
            better = self.best is None or (metrics[key] < self.best[key] if lower_better else metrics[key] > self.best[key])
            if better:
                self.best = {"step": self.step, **metrics}

    # ------------------------------------------------------------------ training
    def fit(self) -> dict[str, Any]:
        t = self.cfg.trainer
        max_steps, accum = int(t.max_steps), int(t.grad_accum)
        world = self.accelerator.num_processes
        train_split = self.exp.splits["train"]
        lengths = [len(ids) for ids in train_split["input_ids"]] if t.group_by_length else None
        order = batch_order(len(train_split), int(t.batch_size), int(self.cfg.seed),
                            self.step * accum * world, max_steps * accum * world, lengths)
        loader = self.accelerator.prepare(make_loader(self.exp.splits["train"], self.exp.tokenizer, int(t.batch_size), order))
        batches = iter(loader)
        method, model, device = self.exp.method, self.model, self.accelerator.device
        log_sums: dict[str, torch.Tensor] = {}
        log_tokens = torch.zeros((), device=device, dtype=torch.long)
        log_count, log_start = 0, time.perf_counter()
        progress = _progress(self.show_progress, max_steps, self.step)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        model.train()
        try:
            with progress:
                while self.step < max_steps:
                    step_start = time.perf_counter()
                    for _ in range(accum):
                        batch = next(batches)
                        with self.accelerator.accumulate(model):
                            out = model(**batch)
                            terms = {"loss/task": out.loss.detach()}
                            loss = out.loss
                            for name, value in method.loss_terms(model).items():
                                loss = loss + value
                                terms[f"reg/{name}"] = value.detach()
                            if self.exp.regularizers:
                                ctx = RegularizerContext(model, method, batch, out)
                                for reg in self.exp.regularizers:
                                    value = reg.term(ctx)
                                    loss = loss + reg.weight * value
                                    terms[f"reg/{reg.name}"] = value.detach()
                            terms["loss"] = loss.detach()
                            self.accelerator.backward(loss)
                            if self.accelerator.sync_gradients:
                                method.on_after_backward(model, self.step)
                                if float(t.max_grad_norm) > 0:
                                    terms["grad_norm"] = self.accelerator.clip_grad_norm_(
                                        [p for p in model.parameters() if p.requires_grad], float(t.max_grad_norm)
                                    ).detach()
                                for name, value in method.on_before_optimizer_step(model, self.step, self.base_lr).items():
                                    terms[f"reg/{name}"] = value.detach()
                                self.optimizer.step()
                                self.scheduler.step()
                                method.on_after_optimizer_step(model, self.step, max_steps)
                                self.optimizer.zero_grad(set_to_none=True)
                        for k, v in terms.items():
                            log_sums[k] = log_sums.get(k, 0) + v.float() / accum
                        log_tokens += batch["attention_mask"].sum()
                    self.step += 1
                    log_count += 1
                    self.train_time += time.perf_counter() - step_start
                    if self.step % int(t.log_every) == 0 or self.step == max_steps:
                        tokens = int(log_tokens) * world  # the one host sync per logging interval
                        elapsed = max(time.perf_counter() - log_start, 1e-9)
                        record = {"step": self.step, "split": "train", "lr": self.scheduler.get_last_lr()[0],
                                  "tokens_per_s": tokens / elapsed}
                        record.update({k: float(v) / log_count for k, v in log_sums.items()})
                        self.run.append_metrics(record)
                        self.tokens_seen += tokens
                        progress.show(self.step, record, self.best, str(t.metric))
                        log_sums, log_count, log_start = {}, 0, time.perf_counter()
                        log_tokens.zero_()
                    else:
                        progress.show(self.step)
                    if int(t.eval_every) and self.step % int(t.eval_every) == 0 and self.step != max_steps:
                        self._log_eval("validation", self._evaluate("validation"))
                        progress.show(self.step, None, self.best, str(t.metric))
                    if int(t.checkpoint_every) and self.step % int(t.checkpoint_every) == 0:
                        self._save_checkpoint()
        except (KeyboardInterrupt, _Interrupted):
            if self.step > 0:
                self._save_checkpoint()
            raise KeyboardInterrupt from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        final = self._evaluate("validation")
        self._log_eval("validation", final)
        test = self._evaluate("test")
        self.run.append_metrics({"step": self.step, "split": "test", **test})
        trainable, total = count_parameters(self.exp.model)
        return {
            "test": test,
            "final_validation": final,
            "best_validation": self.best,
            "steps": self.step,
            "trainable_params": trainable,
            "total_params": total,
            "wall_time_s": self.train_time,
            "tokens_per_s": self.tokens_seen / max(self.train_time, 1e-9),
            "peak_memory_mb": _peak_memory_mb(self.accelerator.device),
            "device": str(self.accelerator.device),
            "metric": str(t.metric),
        }


class _progress:
    """A rich progress bar showing loss, the key metric and tokens/s (or nothing)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled = enabled
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[info]}"))
            self.task = self.bar.add_task("train", total=total, completed=done, info="")
            self.info = ""

    def __enter__(self):
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)

    def show(self, step: int, record: dict | None = None, best: dict | None = None, metric: str = "") -> None:
        if not self.enabled:
            return
        if record is not None:
            self.info = f"loss {record.get('loss', float('nan')):.4f}  {record['tokens_per_s']:.0f} tok/s"
        if best is not None and metric in best:
            self.info = self.info.split("  best")[0] + f"  best val {metric} {best[metric]:.4f}"
        self.bar.update(self.task, completed=step, info=self.info)


def latest_checkpoint(run: runs.Run) -> Path | None:
    found = sorted(p for p in run.checkpoints_dir.glob("step_*") if not p.name.endswith(".tmp"))
    return found[-1] if found else None


def train(cfg: DictConfig, *, overrides: list[str], argv: list[str], choices: dict[str, str],
          show_progress: bool = True, on_run: Callable[[runs.Run], None] | None = None) -> runs.Run:
    """Train one run (or resume one) and return its run folder; the status says how it ended.

    ``on_run`` is called with the run folder as soon as it exists (a sweep records it there).
    """
    import warnings

    warnings.filterwarnings("ignore")
    start_checkpoint = None
    if cfg.get("resume"):
        run = runs.resolve(str(cfg.resume), runs.runs_root(cfg.runs_dir))
        if run.status == "completed":
            raise UserError(f"run '{run.path}' is already completed: start a new run instead of resume=")
        start_checkpoint = latest_checkpoint(run)
        if start_checkpoint is None:
            raise UserError(f"run '{run.path}' has no checkpoint to resume from: start it again")
        stored = OmegaConf.load(run.path / "config.yaml")
        # Only the training length may change on resume; everything else is the stored run.
        stored.trainer.max_steps = int(cfg.trainer.max_steps) if _overrides_key(overrides, "trainer.max_steps") else stored.trainer.max_steps
        cfg = stored
    if cfg.trainer.precision == "fp16" and (cfg.trainer.cpu or not torch.cuda.is_available()):
        raise UserError("trainer.precision=fp16 needs a GPU: use trainer.precision=bf16 or fp32 on the CPU")
    torch.manual_seed(int(cfg.seed))
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    exp = build_experiment(cfg)  # every user mistake in data/model/method surfaces here, before a folder exists
    if start_checkpoint is None:
        root = runs.runs_root(cfg.runs_dir)
        name = str(cfg.name) if cfg.get("name") else default_name(choices)
        run = runs.allocate(root, name)
        run.write_config(OmegaConf.to_yaml(cfg, resolve=True), overrides)
        run.write_meta(**runs.new_meta(argv, int(cfg.seed)), choices=choices)
    else:
        run.set_status("running", resumed_from=start_checkpoint.name)
        run.write_config(OmegaConf.to_yaml(cfg, resolve=True), run.overrides())
        _truncate_metrics(run, int(start_checkpoint.name.split("_")[1]))
    if on_run is not None:
        on_run(run)
    try:
        trainer = Trainer(exp, run, start_checkpoint=start_checkpoint, show_progress=show_progress)
        run.write_meta(device=str(trainer.accelerator.device))
        summary = trainer.fit()
        save_adapter(exp, run.adapter_dir)
        if cfg.get("analysis"):
            from peftlab.analysis.run import analyze_experiment

            run_analysis = analyze_experiment(exp)
            runs.atomic_write_json(run.path / "analysis.json", run_analysis)
        run.write_summary(summary)
        run.set_status("completed")
    except KeyboardInterrupt:
        run.set_status("interrupted")
        raise
    except UserError as exc:
        run.set_status("failed", error=str(exc))
        raise
    except BaseException as exc:
        run.set_status("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    return run


def default_name(choices: dict[str, str]) -> str:
    return "-".join(str(choices.get(k, k)) for k in ("method", "model", "dataset")).replace("/", "_")


def _overrides_key(overrides: list[str], key: str) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides)


def _truncate_metrics(run: runs.Run, step: int) -> None:
    """Drop metric lines written after the checkpoint; they are recomputed on resume."""
    kept = [r for r in run.metrics() if int(r.get("step", 0)) <= step and r.get("split") != "test"]
    runs.atomic_write_text(run.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
