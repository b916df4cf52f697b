"""The accelerate training loop of one run: steps, evaluation, selection, checkpoints.

Before the first step, ``method.on_train_begin`` (with the run's length). Per
optimizer step: ``grad_accum`` micro-batches of task loss + method loss
terms + weighted regularizers, backward, ``method.on_after_backward``, gradient
clipping (fp16 gradients are unscaled here, clipping or not), ``method.on_before_optimizer_step``,
the optimizer step, the LR
schedule (linear warmup, then cosine, linear or constant),
``method.on_after_optimizer_step``. Validation every ``trainer.eval_every``
steps and at the end. Host synchronisation happens only at logging, evaluation
and checkpoint intervals: losses and token counts accumulate on the device.

What a run reports is chosen on validation: with ``trainer.select=best`` (the
default) the weights of the best validation pass are kept (``best/`` while
training, ``adapter/`` at the end) and the test split is evaluated on them;
``trainer.select=final`` keeps the last step; a tie on the key metric goes to
the lower validation loss. Test is measured, never used to choose. A
non-finite loss fails the run (see :mod:`peftlab.nonfinite`). What the run
learns (classification, causal LM) is its task's business (:mod:`peftlab.tasks`):
the task computes the loss, pads the batches and evaluates.

Signals become a request honoured between steps (see :mod:`peftlab.stopping`):
the run is checkpointed at that boundary and ``peftlab train resume=RUN``
continues it bit for bit, since the batch order is a pure function of (seed,
step) and the checkpoint holds every state the loop changes.
"""

from __future__ import annotations

import math
import shutil
import resource
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from omegaconf import OmegaConf

from peftlab import checkpoints, runs, stopping, trackers
from peftlab.data.order import batch_order
from peftlab.evaluate import make_loader
from peftlab.experiment import Experiment, count_parameters, frozen_fingerprint, read_trained, save_adapter
from peftlab.metrics import lower_is_better
from peftlab.nonfinite import Guard, NonFinite
from peftlab.processes import Processes
from peftlab.progress import Progress
from peftlab.regularizers.base import RegularizerContext, add_terms
from peftlab.tasks.base import Task, combine


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


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class IntervalLog:
    """Training terms summed on the device between two metric lines (one host sync per line)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.tokens = torch.zeros((), device=self.device, dtype=torch.long)
        self.start = time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], tokens: torch.Tensor) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0) + v.float()
        self.count += 1
        self.tokens += tokens

    def record(self, step: int, lr: float) -> tuple[dict, int]:
        """The metric line of the interval and its token count; starts the next interval."""
        tokens = int(self.tokens)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        record = {"step": step, "split": "train", "lr": lr, "tokens_per_s": tokens / elapsed}
        record.update({k: float(v) / max(self.count, 1) for k, v in self.sums.items()})
        self.reset()
        return record, tokens

    def state(self) -> dict:
        """The unfinished interval, so a resumed run writes the same metric lines."""
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "count": self.count, "tokens": int(self.tokens)}

    def load_state(self, state: dict) -> None:
        self.sums = {k: torch.tensor(v, dtype=torch.float32, device=self.device) for k, v in state["sums"].items()}
        self.count = int(state["count"])
        self.tokens.fill_(int(state["tokens"]))


class TaskForward(torch.nn.Module):
    """The model and its task's loss as one module, so that a data-parallel wrapper's forward
    (which synchronises gradients) is the whole training forward, task-specific paths included."""

    def __init__(self, task: Task, model: torch.nn.Module):
        super().__init__()
        self.task, self.model = task, model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        return self.task.loss(self.model, batch)


class Trainer:
    """Runs one experiment into one run folder; under a launcher, one of the run's processes.

    Every process trains on its slice of each global batch; only the main process
    writes to the run folder. ``self.model`` is the unwrapped model that method hooks,
    regularizers, evaluation and saving see (a data-parallel wrapper would prefix its
    parameter names); ``self.net`` is what the forward pass goes through.
    """

    def __init__(self, exp: Experiment, run: runs.Run, procs: Processes, *,
                 checkpoint: checkpoints.Checkpoint | None = None, quiet: bool = False):
        from accelerate import Accelerator

        self.exp, self.run, self.cfg, self.procs = exp, run, exp.cfg, procs
        self.writes = procs.is_main
        t = self.cfg.trainer
        precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[t.precision]
        self.trackers = [str(n) for n in t.get("log_with") or []]
        self.accelerator = Accelerator(cpu=procs.cpu, mixed_precision=precision, gradient_accumulation_steps=int(t.grad_accum),
                                       **trackers.accelerator_options(self.trackers, run.path))
        if self.writes:
            trackers.start(self.accelerator, self.trackers, run.path, run.label,
                           OmegaConf.to_container(self.cfg, resolve=True))
        # Every setting the loop reads, read once here: no config lookups per step.
        self.max_steps, self.accum = int(t.max_steps), int(t.grad_accum)
        self.log_every, self.eval_every = int(t.log_every), int(t.eval_every)
        self.checkpoint_every, self.keep = int(t.checkpoint_every), int(t.keep_checkpoints)
        self.clip, self.metric, self.select = float(t.max_grad_norm), str(t.metric), str(t.select)
        self.lower_better = lower_is_better(self.metric)
        self.method, self.regularizers, self.task = exp.method, exp.regularizers, exp.task
        self.eval_batch_size, self.batch_size = int(t.eval_batch_size), int(t.batch_size)
        if t.gradient_checkpointing:
            exp.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.net, self.optimizer = self.accelerator.prepare(TaskForward(exp.task, exp.model), self._optimizer())
        self.model = exp.model
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        warmup = int(round(float(t.warmup_ratio) * self.max_steps))
        self.lr_factor = lr_lambda(str(t.schedule), warmup, self.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer.optimizer, self.lr_factor)
        device = self.accelerator.device
        self.guard = Guard(str(t.nonfinite), int(t.max_consecutive_skips), device)
        self.log = IntervalLog(device)
        self.step, self.best, self.train_time, self.tokens_seen = 0, None, 0.0, 0
        self.checkpointed_best: dict | None = None  # the best the newest checkpoint records
        self.details: dict[str, dict] = {}  # the latest evaluation details per split (see _evaluate)
        self.last_checkpoint: checkpoints.Checkpoint | None = None
        self.fingerprint: str | None = None  # of the frozen weights, computed at the first checkpoint
        if checkpoint is not None:
            self._resume_from(checkpoint)
        self.method.on_train_begin(self.model, optimizer=self.optimizer.optimizer, total_steps=self.max_steps,
                                   grad_accum=self.accum)
        self.progress = Progress(self.max_steps, self.step, self.metric, quiet=quiet or not self.writes)

    def _optimizer(self) -> torch.optim.Optimizer:
        from peftlab.config import locate, params_of

        opt_cfg = self.cfg.optimizer
        self.base_lr = float(opt_cfg.lr)
        groups = self.method.param_groups(self.exp.model, self.base_lr, float(opt_cfg.get("weight_decay", 0.0)))
        kwargs = {k: v for k, v in params_of(opt_cfg).items() if k not in ("lr", "weight_decay")}
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        return locate(opt_cfg._target_)(groups, lr=self.base_lr, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    def _loop_state(self) -> dict:
        return {"best": self.best, "train_time_s": self.train_time, "tokens_seen": self.tokens_seen,
                "metrics_bytes": self.run.metrics_size(), "interval": self.log.state(), **self.guard.state()}

    def checkpoint(self, state: dict | None = None) -> checkpoints.Checkpoint | None:
        """Checkpoint the current step (once per step; never a step with a non-finite loss)."""
        if self.step == 0:
            return None
        if self.last_checkpoint is not None and self.last_checkpoint.step == self.step:
            return self.last_checkpoint
        self.guard.check(self.max_steps)
        Guard.check_parameters(self.trainable, self.step, self.max_steps)
        rng = self.procs.gather(checkpoints.rng_state())  # each process resumes its own random streams
        if not self.writes:
            self.last_checkpoint = checkpoints.Checkpoint(self.run.checkpoints_dir / checkpoints.folder_name(self.step),
                                                          self.step)
            return self.last_checkpoint
        if self.fingerprint is None:
            self.fingerprint = frozen_fingerprint(self.exp.model)
        self.last_checkpoint = checkpoints.save(self.run.checkpoints_dir, self.step, self.exp, self.optimizer,
                                                state or self._loop_state(), self.fingerprint, rng)
        checkpoints.prune(self.run.checkpoints_dir, self.keep)
        self.checkpointed_best = self.best
        self._keep_best_weights()
        return self.last_checkpoint

    def _resume_from(self, checkpoint: checkpoints.Checkpoint) -> None:
        state = checkpoints.load(checkpoint, self.exp, self.optimizer, self.procs.rank, self.procs.world, warn=warn)
        self.step, self.best = int(state["step"]), state["best"]
        self.checkpointed_best = self.best
        if self.writes:
            self._keep_best_weights()  # a later attempt's best, past this checkpoint, no longer counts
        self.train_time, self.tokens_seen = float(state["train_time_s"]), int(state["tokens_seen"])
        self.guard.load_state(state)
        self.log.load_state(state["interval"])
        if self.writes:
            self.run.truncate_metrics(int(state["metrics_bytes"]))
        self.last_checkpoint = checkpoint
        # The schedule is a pure function of the step: set it rather than store it.
        self.scheduler.last_epoch = self.step
        for group, base in zip(self.optimizer.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * self.lr_factor(self.step)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, split: str, name: str | None = None) -> dict[str, float]:
        """The task's metrics on ``split``; its per-example outputs go to ``<task.outputs_folder>/<name>.jsonl``.

        Each process measures its own contiguous part of the split; the parts are combined
        in order, so every process gets the metrics of the whole split, no example twice.
        """
        procs = self.procs
        try:
            tally = self.task.measure(self.model, self.exp.tokenizer, self.exp.splits[split],
                                      batch_size=self.eval_batch_size, device=self.accelerator.device,
                                      full=split == "test", part=(procs.rank, procs.world))
        except FloatingPointError as exc:  # generation from NaN logits: the weights diverged
            raise NonFinite(f"the {split} pass at step {self.step} failed ({exc}): the parameters have diverged; "
                            "lower optimizer.lr") from None
        result = self.task.summarize(combine(procs.gather(tally)))
        Guard.check_metrics(result.metrics, split, self.step)
        if result.rows and self.writes:
            from peftlab.evaluate_lm import write_generations

            write_generations(result.rows, self.run.path / self.task.outputs_folder / f"{name or split}.jsonl")
        self.details[split] = result.details  # the latest pass's: for test, the selected checkpoint's
        return result.metrics

    def _improves(self, metrics: dict) -> bool:
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False  # NaN (no generations to score, say) is no result: nothing beats it, it beats nothing
        best = self.best.get(self.metric) if self.best is not None else None
        if best is None:  # none yet (or a stored NaN, written as null)
            return True
        if value != best:
            return value < best if self.lower_better else value > best
        # A tie on the key metric (exact match 0 early in training, say) goes to the lower validation loss.
        return self.metric != "loss" and metrics.get("loss", math.inf) < self.best.get("loss", math.inf)

    def validate(self) -> dict[str, float]:
        """One validation pass: logged, tracked as best, its weights kept when best is selected."""
        self.guard.check(self.max_steps)
        metrics = self._evaluate("validation", f"validation-{checkpoints.folder_name(self.step)}")
        if self.writes:
            self._record({"step": self.step, "split": "validation", **metrics})
        if self._improves(metrics):
            self.best = {"step": self.step, **metrics}
            if self.select == "best" and self.writes:
                save_adapter(self.exp, self._best_weights(self.step))
                self._keep_best_weights()
        self.progress.evaluated(self.step, self.best)
        return metrics

    def _best_weights(self, step: int) -> Path:
        """Where the weights of the validation pass at ``step`` are kept (``best/step_NNNNNNN``)."""
        return self.run.best_dir / checkpoints.folder_name(step)

    def _keep_best_weights(self) -> None:
        """Keep the best weights the newest checkpoint names and the current best; remove the others.

        One folder per best step, not one overwritten folder: a run killed after a new best
        but before its next checkpoint resumes with the older best, whose weights must still
        be there (and the newer ones, from an attempt that no longer counts, must not be read).
        """
        if not self.run.best_dir.is_dir():
            return
        wanted = {checkpoints.folder_name(int(b["step"])) for b in (self.best, self.checkpointed_best) if b}
        for folder in self.run.best_dir.iterdir():
            if folder.is_dir() and folder.name not in wanted:
                shutil.rmtree(folder, ignore_errors=True)

    # ------------------------------------------------------------------ training
    def _batches(self) -> Iterator[dict]:
        """This process's micro-batches from the current step on.

        The order is one of global batches (``trainer.batch_size`` times the number of
        processes), each cut into one contiguous slice per process: the examples of a
        step, and so the update, do not depend on how many processes share them.
        """
        split = self.exp.splits["train"]
        rank, world, size = self.procs.rank, self.procs.world, self.batch_size
        lengths = [len(ids) for ids in split["input_ids"]] if self.cfg.trainer.group_by_length else None
        order = batch_order(len(split), size * world, int(self.cfg.seed),
                            self.step * self.accum, self.max_steps * self.accum, lengths)
        mine = [batch[rank * size:(rank + 1) * size] for batch in order]
        loader = make_loader(split, self.task.collator(self.exp.tokenizer), size, mine)
        device = self.accelerator.device
        return ({k: v.to(device) for k, v in batch.items()} for batch in loader)

    def fit(self) -> bool:
        """Train up to ``max_steps``; False when a stop was requested first (at a step boundary)."""
        batches = self._batches()
        self.net.train()
        while self.step < self.max_steps:
            if self.procs.any(stopping.requested()):
                return False
            terms = self._train_step(batches)
            self.step += 1
            self._after_step(terms)
        return True

    def _train_step(self, batches: Iterator[dict]) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        terms: dict[str, torch.Tensor] = {}
        tokens = torch.zeros((), dtype=torch.long, device=self.accelerator.device)
        for _ in range(self.accum):
            batch = next(batches)
            with self.accelerator.accumulate(self.net):
                for k, v in self._forward_backward(batch).items():
                    terms[k] = terms.get(k, 0) + v / self.accum
            tokens += batch["attention_mask"].sum()
        terms, tokens = self._over_processes(terms, tokens)
        self._update(terms)
        self.log.add(terms, tokens)
        self.train_time += time.perf_counter() - start
        return terms

    def _over_processes(self, terms: dict[str, torch.Tensor], tokens: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """The step's terms averaged and its tokens summed over the processes (one collective), so the
        non-finite guard decides alike everywhere and the logs describe the whole global batch."""
        if not self.procs.distributed:
            return terms, tokens
        keys = sorted(terms)
        values = torch.stack([terms[k].float() for k in keys] + [tokens.float()])
        values = self.procs.mean(values)
        return {k: values[i] for i, k in enumerate(keys)}, (values[-1] * self.procs.world).round().long()

    def _forward_backward(self, batch: dict) -> dict[str, torch.Tensor]:
        loss, out = self.net(batch)
        terms = {"loss/task": loss.detach()}
        for name, value in self.method.loss_terms(self.model).items():
            loss = loss + value
            terms[f"reg/{name}"] = value.detach()
        if self.regularizers:
            # One context per micro-batch: the pretrained outputs, if any term asks, are computed once.
            weighted, logged = add_terms(self.regularizers, RegularizerContext(self.model, self.method, batch, out,
                                                                                self.task))
            loss = loss if weighted is None else loss + weighted
            terms.update(logged)
        terms["loss"] = loss.detach()
        self.accelerator.backward(loss)
        return terms

    def _update(self, terms: dict[str, torch.Tensor]) -> None:
        """The optimizer step after the last micro-batch (or its skip, under trainer.nonfinite=skip)."""
        model, method, step = self.model, self.method, self.step
        grad_norm = self._hooked_clip(step)
        if grad_norm is not None:
            terms["grad_norm"] = grad_norm
        self.guard.observe(step + 1, terms["loss"])
        if not self.guard.skip_update(step + 1, terms["loss"], grad_norm):
            for name, value in method.on_before_optimizer_step(model, step, self.base_lr).items():
                terms[f"reg/{name}"] = value.detach()
            self.optimizer.step()
            method.on_after_optimizer_step(model, step, self.max_steps)
        self.scheduler.step()  # the schedule follows the step count, skipped steps included
        self.optimizer.zero_grad(set_to_none=True)

    def _hooked_clip(self, step: int) -> torch.Tensor | None:
        """``on_after_backward``, then clipping; the gradient norm, or None with clipping off.

        Gradients are unscaled whatever the clipping setting: what a method adds in its
        hooks must meet unscaled gradients. A method that replaces the gradients and is
        clipped by the raw norm (``clips_by_raw_gradient_norm``) has the norm measured
        before its hook and the scale applied after it."""
        if self.clip > 0 and self.method.clips_by_raw_gradient_norm:
            self.accelerator.unscale_gradients()
            grads = [p.grad for p in self.trainable if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads)
            self.method.on_after_backward(self.model, step)
            torch.nn.utils.clip_grads_with_norm_(self.trainable, self.clip, grad_norm)
            return grad_norm.detach()
        self.method.on_after_backward(self.model, step)
        if self.clip > 0:  # unscales fp16 gradients first
            return self.accelerator.clip_grad_norm_(self.trainable, self.clip).detach()
        self.accelerator.unscale_gradients()
        return None

    def _record(self, record: dict) -> None:
        """One metrics line: to metrics.jsonl, and to the trackers (``trainer.log_with``). Main process only."""
        self.run.append_metrics(record)
        trackers.log(self.accelerator, self.trackers, record)

    def _after_step(self, terms: dict[str, torch.Tensor]) -> None:
        step = self.step
        if step % self.log_every == 0 or step == self.max_steps:
            record, tokens = self.log.record(step, self.scheduler.get_last_lr()[0])
            self.tokens_seen += tokens
            if self.writes:
                self._record(record)
            self.guard.check(self.max_steps)
            self.progress.logged(step, record)
        else:
            self.progress.step(step)
        if self.eval_every and step % self.eval_every == 0 and step != self.max_steps:
            self.validate()
        if self.checkpoint_every and step % self.checkpoint_every == 0:
            self.checkpoint()

    # ------------------------------------------------------------------ the end
    def finish(self) -> dict[str, Any] | None:
        """Final validation, selection of the checkpoint, test. None when a stop came first."""
        at_end = self._loop_state()  # what a checkpoint of the finished loop holds
        final_validation = self.validate()
        if self.procs.any(stopping.requested()):
            self.checkpoint(at_end)
            return None
        final_test = self._evaluate("test", f"test-{checkpoints.folder_name(self.step)}")
        if self.procs.any(stopping.requested()):
            self.checkpoint(at_end)
            return None
        selected_step, test, note = self._select(final_test)
        if self.writes:
            self._record({"step": selected_step, "split": "test", **test})
        trainable, total = count_parameters(self.exp.model)
        summary = {
            "metric": self.metric,
            "selection": self.select if note is None else "final",
            "selected_step": selected_step,
            "test": test,
            "final_test": final_test,
            "best_validation": self.best,
            "final_validation": final_validation,
            "steps": self.step,
            "trainable_params": trainable,
            "total_params": total,
            "wall_time_s": self.train_time,
            "tokens_per_s": self.tokens_seen / max(self.train_time, 1e-9),
            "peak_memory_mb": _peak_memory_mb(self.accelerator.device),
            "device": str(self.accelerator.device),
            "processes": self.procs.world,
        }
        extra = self.method.memory_bytes(self.model)
        if extra:
            summary["method_memory_mb"] = {k: v / 2**20 for k, v in extra.items()}
        if self.guard.skipped:
            summary["skipped_steps"] = self.guard.skipped
        if self.task.data_report:
            summary["data"] = self.task.data_report
        if note:
            summary["selection_note"] = note
        if self.details.get("test"):
            summary["test_details"] = self.details["test"]
        if self.writes:
            trackers.end(self.accelerator, self.trackers)
        return summary

    def _select(self, final_test: dict) -> tuple[int, dict, str | None]:
        """(selected step, its test metrics, why the final step was kept against the config or None)."""
        if self.select == "best" and self.best is None:
            return self.step, final_test, (f"no validation pass gave a finite {self.metric}: the last step's weights "
                                           f"are kept (choose a trainer.metric that validation measures)")
        if self.select != "best" or self.best["step"] == self.step:
            return self.step, final_test, None
        self.procs.wait_for_everyone()  # the main process has written best/
        step = int(self.best["step"])
        folder = self._best_weights(step)
        if not (folder / "adapter.safetensors").is_file() and (self.run.best_dir / "adapter.safetensors").is_file():
            folder = self.run.best_dir  # a run started before best weights were kept per step
        if not self.procs.share((folder / "adapter.safetensors").is_file()):
            return self.step, final_test, f"the best-validation weights (step {step}) were not found"
        read_trained(self.exp, folder, f"best-validation weights {folder}")
        return step, self._evaluate("test", f"test-{checkpoints.folder_name(step)}"), None


def warn(message: str) -> None:
    """A warning line on stderr (the main process's, under a launcher)."""
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)
