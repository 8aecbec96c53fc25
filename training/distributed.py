"""Data-parallel training on every visible GPU, through accelerate.

With several GPUs, ``train_on_prepared`` starts one process per GPU, set up the way accelerate's
launchers set them up (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment), so the
``Accelerator`` of each process joins one process group (NCCL on GPUs, gloo on CPUs), puts itself on
its own device and wraps the UNet in DDP (``loop.setup``). The processes are spawned, not forked: the
parent has used CUDA already (preprocessing) and a forked CUDA context is unusable.

Every process draws the same global batch (train_batch_size per process) and trains on its shard;
``loop.fit`` keeps the result equal to one process training the global batch.
"""

from __future__ import annotations

import logging
import os
import socket

import torch

log = logging.getLogger(__name__)


def num_processes() -> int:
    """One process per visible GPU; one on a CPU-only machine."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def launch(function, args: tuple, processes: int, *, cpu: bool = False) -> None:
    """Run ``function(*args)`` in ``processes`` spawned processes of one accelerate process group; returns
    when all are done, raises when one fails. ``cpu``: a gloo group on the CPU (tests, no GPU)."""
    import torch.multiprocessing as mp

    log.info("data-parallel training in %d processes", processes)
    mp.start_processes(_process, args=(function, args, processes, _free_port(), cpu), nprocs=processes,
                       start_method="spawn", join=True)


def _process(rank: int, function, args: tuple, world: int, port: int, cpu: bool) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if cpu:
        os.environ["ACCELERATE_USE_CPU"] = "true"
    if rank == 0:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        function(*args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
