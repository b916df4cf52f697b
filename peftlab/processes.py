"""The processes of one run: who is main, and the few collective steps the loop needs.

Under a launcher (``accelerate launch``, ``torchrun``, SLURM through submitit)
every process runs ``peftlab train`` with the same overrides. They are one run:
the main process allocates (or reopens) the run folder and is the only one that
writes to it; the others learn its path from it. Each process trains on its own
slice of every global batch and evaluates its own contiguous slice of each
split; what they measured is gathered and combined, so the numbers equal those
of one process.

With a single process every collective here is a local no-op, so the
single-process loop pays nothing for them. The module imports torch only when
a run starts, so the CLI can ask :func:`launched_rank` cheaply.
"""

from __future__ import annotations

import os
from typing import Any

#: Environment variables through which launchers (torchrun, accelerate, MPI) announce the processes.
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


def _first_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return default


def launched_world_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return _first_int(_WORLD_SIZE_VARIABLES, 1)


def launched_rank() -> int:
    """This process's rank among them (0 without a launcher): only rank 0 talks to the user."""
    return _first_int(_RANK_VARIABLES, 0)


def use_cpu(cpu_requested: bool) -> bool:
    """Whether accelerate should run on the CPU.

    accelerate recognises a multi-process launch on the CPU only when told to use
    the CPU, so on a machine without CUDA a launch of several processes asks for it
    (gloo then connects the processes).
    """
    import torch

    return bool(cpu_requested) or (launched_world_size() > 1 and not torch.cuda.is_available())


class Processes:
    """This process's place among the processes of the run."""

    def __init__(self, cpu: bool):
        from accelerate import PartialState

        self.cpu = cpu
        self._state = PartialState(cpu=cpu)
        self.rank, self.world = self._state.process_index, self._state.num_processes
        self.is_main = self._state.is_main_process
        self.device = self._state.device

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def share(self, value: Any) -> Any:
        """The main process's ``value``, on every process (any picklable object)."""
        if not self.distributed:
            return value
        import torch

        box = [value if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order, on every process."""
        if not self.distributed:
            return [value]
        import torch

        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any (a stop request, say)."""
        if not self.distributed:
            return bool(flag)
        import torch

        t = torch.tensor([1 if flag else 0], dtype=torch.long, device=self._state.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def mean(self, values: Any) -> Any:
        """The mean over processes of a tensor (every process's losses averaged, as DDP averages gradients)."""
        if not self.distributed:
            return values
        import torch

        out = values.detach().clone()
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
        return out / self.world

    def wait_for_everyone(self) -> None:
        if self.distributed:
            self._state.wait_for_everyone()


def start(cpu_requested: bool) -> Processes:
    """Join the run's processes (a no-op without a launcher); call before anything reads or writes runs."""
    return Processes(use_cpu(cpu_requested))
