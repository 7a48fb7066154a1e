"""Data-parallel ESD: the processes of one erase and the few collectives the engine needs.

Launch with Hugging Face accelerate (which also does multi-node), or `esd-sdk erase --processes N`:

    accelerate launch --multi_gpu --num_processes 8 -m esd_sdk erase --concept "van gogh" --out vg
    accelerate launch --multi_gpu --num_machines 2 --machine_rank 0 --main_process_ip node0 \\
        --num_processes 16 -m esd_sdk erase ...            # then machine_rank 1 on node1

Every process holds the whole model and trains the same tensors. All processes draw the same
step-level random numbers (the concept's t_enc, one noise tensor for the whole global batch) from
one seeded generator, and each denoises its own slice of that batch: a run with P processes of
batch B takes exactly the steps of one process with batch P x B, whatever P is, so seeds
reproduce and a checkpoint resumes on any number of processes with the same global batch.
Gradients are averaged across processes before each Adam step, so every process keeps identical
weights; rank 0 alone writes checkpoints and the output.

A stop request (Ctrl-C, or SIGTERM from a scheduler) on any process is shared with the others at
the end of the step, so all of them stop after the same step and the checkpoint is consistent.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

import torch


class Processes:
    """This process's place among the processes of one erase (one process: rank 0 of 1)."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None):
        self.rank, self.world, self.device = rank, world, device
        self.stop_requested = False

    @classmethod
    def from_environment(cls, device: str | torch.device | None = None) -> "Processes":
        """Join the processes a launcher started (WORLD_SIZE > 1), else a single process.

        Under a launcher, the device is this process's own (cuda:LOCAL_RANK; the CPU with gloo
        when there is no GPU or ``device`` is "cpu")."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(device=torch.device(device) if device is not None else None)
        from accelerate import PartialState

        cpu = (device is not None and torch.device(device).type == "cpu") or not torch.cuda.is_available()
        state = PartialState(cpu=cpu)
        return cls(state.process_index, state.num_processes, torch.device("cpu") if cpu else state.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This process's slice of a tensor that holds the whole global batch along ``dim``."""
        size = batch.shape[dim] // self.world
        return batch.narrow(dim, self.rank * size, size)

    def gather(self, shard: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """The global batch from every process's ``shard`` (the inverse of `shard`); collective."""
        if self.world == 1:
            return shard
        import torch.distributed as dist

        shards = [torch.empty_like(shard) for _ in range(self.world)]
        dist.all_gather(shards, shard.contiguous())
        return torch.cat(shards, dim=dim)

    def finish_step(self, params: list[torch.nn.Parameter], loss: torch.Tensor) -> tuple[float, bool]:
        """Average the gradients of ``params`` and the loss over processes; also tell whether any
        process was asked to stop. Returns (mean loss, stop)."""
        flags = torch.stack([loss.detach().float(), torch.tensor(float(self.stop_requested), device=loss.device)])
        if self.world > 1:
            import torch.distributed as dist

            works = [dist.all_reduce(p.grad, async_op=True) for p in params if p.grad is not None]
            dist.all_reduce(flags)
            for work in works:
                work.wait()
            for p in params:
                if p.grad is not None:
                    p.grad.div_(self.world)
            flags[0] /= self.world
        return float(flags[0]), bool(flags[1] > 0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    @contextmanager
    def stop_on_signals(self):
        """While training, Ctrl-C and SIGTERM ask for a stop at the end of the step (shared with
        every process) instead of breaking a step in the middle. In a single process a second
        Ctrl-C interrupts at once; under a launcher, which forwards one signal to each process
        and kills them 30 s later, repeats are ignored so that the stop stays shared."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request(signum, frame):
            self.stop_requested = True
            if self.world == 1:
                signal.signal(signal.SIGINT, signal.default_int_handler)

        previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def is_main_process() -> bool:
    """Rank 0 of a launch, or the only process: the one that owns outputs. Needs no setup."""
    return int(os.environ.get("RANK", "0")) == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now, for servers that cannot bind port 0 and report it
    (accelerate's rendezvous, Triton)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(args: list[str], processes: int) -> int:
    """Run ``python -m esd_sdk ARGS`` in ``processes`` processes on this machine with accelerate
    launch; return its exit status. Ctrl-C reaches the launcher, which forwards it to every process:
    they stop at the end of the same step and rank 0 saves the checkpoint."""
    import subprocess
    import sys

    port = free_port()  # for the rendezvous, so that several runs can share a machine
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), "-m", "esd_sdk", *args]
    with subprocess.Popen(command) as launcher:
        while True:
            try:
                return launcher.wait()
            except KeyboardInterrupt:  # the launcher got it too (same terminal): wait for the checkpoint
                continue
