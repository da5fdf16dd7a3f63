"""Several processes, one result: defpert under ``torch.distributed`` (``torchrun``).

    torchrun --nproc-per-node 2 -m defpert dp -p linf -k 20 -e 0.2 -a 0.01
    torchrun --nproc-per-node 4 -m defpert train --epochs 3

Every process runs the same program on the same data. The engine cuts the examples into
the chunks a single process would use and gives each rank a contiguous run of them; the
ranks then exchange their results, so every rank holds every example's result and the
program stays in lockstep. Since each chunk is computed exactly as in one process, the
accuracies and saved arrays are the same as a single process's, element for element
(with the same number of threads per process). Only rank 0 prints and writes files;
the other ranks wait for each write, so a file read later exists on every rank.

Backend: ``nccl`` when every rank has a GPU of its own (rank i uses ``cuda:LOCAL_RANK``), else ``gloo``
(ranks beyond the GPUs share them).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched() -> bool:
    """Was this process started by torchrun (or another launcher) with several ranks?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Is a process group with more than one rank running?"""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that prints and writes."""
    return rank() == 0


def local_device() -> torch.device:
    """This rank's GPU when there are GPUs (ranks beyond the GPUs share them), else the CPU."""
    if torch.cuda.is_available():
        return torch.device(
            "cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        )
    return torch.device("cpu")


def _one_gpu_per_rank() -> bool:
    """nccl needs a GPU of its own per rank; with fewer GPUs than ranks gloo is used."""
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return torch.cuda.is_available() and torch.cuda.device_count() >= ranks_here


def init() -> None:
    """Join the process group torchrun describes (no-op for a single process)."""
    if not launched() or dist.is_initialized():
        return
    backend = "nccl" if _one_gpu_per_rank() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def _chunks_of(r: int, w: int, n_chunks: int) -> range:
    return range(r * n_chunks // w, (r + 1) * n_chunks // w)


def my_chunks(n_chunks: int) -> range:
    """The contiguous run of chunk indices this rank computes."""
    return _chunks_of(rank(), world_size(), n_chunks)


def _comm_device() -> torch.device:
    """Where collectives need their tensors: this rank's GPU for nccl, else the CPU."""
    return local_device() if dist.get_backend() == "nccl" else torch.device("cpu")


def share_rows(out: torch.Tensor, bounds: list[tuple[int, int]]) -> torch.Tensor:
    """Fill ``out`` with every rank's rows; ``bounds`` are the (lo, hi) of each chunk.

    Each rank has written the rows of its own chunks (:func:`my_chunks`); afterwards
    every rank holds all rows.
    """
    if not active():
        return out
    w = world_size()
    blocks = []
    for r in range(w):
        chunks = _chunks_of(r, w, len(bounds))
        blocks.append((bounds[chunks[0]][0], bounds[chunks[-1]][1]) if len(chunks) else (0, 0))
    longest = max(hi - lo for lo, hi in blocks)
    device = _comm_device()
    lo, hi = blocks[rank()]
    mine = torch.zeros((longest, *out.shape[1:]), dtype=out.dtype, device=device)
    mine[: hi - lo] = out[lo:hi].to(device)
    gathered = [torch.empty_like(mine) for _ in range(w)]
    dist.all_gather(gathered, mine)
    for (lo, hi), block in zip(blocks, gathered, strict=True):
        out[lo:hi] = block[: hi - lo].to(out.device)
    return out


def main_decides(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank.

    A decision that leads to collectives (reuse a saved file, or compute and write it) must
    be the same on every rank: a rank that looks at the disk after rank 0 has written the
    file would see it and skip the collectives rank 0 waits in (a deadlock seen under load).
    """
    if not active():
        return flag
    return bool(from_main(torch.tensor([int(flag)]))[0])


def from_main(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank (the others pass a tensor of the same shape)."""
    if not active():
        return tensor
    buf = tensor.to(_comm_device()).contiguous()
    dist.broadcast(buf, 0)
    return buf.to(tensor.device)


def sum_over_ranks(*values: float) -> tuple[float, ...]:
    """Each value summed over all ranks (unchanged for a single process)."""
    if not active():
        return values
    buf = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(buf)
    return tuple(float(v) for v in buf.cpu())
