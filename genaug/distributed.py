"""Several processes training one model under `torchrun`: who is who, and the few collectives the loop needs.

`torchrun --nproc_per_node=N` starts N copies of the same command with
`WORLD_SIZE`, `RANK` and `LOCAL_RANK` in their environment. The training
loop joins them into one process group (`setup`); everything else here is
a no-op, or the obvious answer for one process, when there is no group.
Rank 0 is the one that prints and writes files (`is_main`, `main_only`).

Every collective here must be reached by every rank in the same order, so
the callers take every decision that leads to one from values that are
already equal on all ranks (or that they made equal with `any_rank`).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from genaug.errors import GenaugError, first_line


def launched() -> bool:
    """True when this process is one of several started by torchrun (WORLD_SIZE > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def active() -> bool:
    """True when a process group of more than one process is up: the collectives below communicate."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank: the group's, or torchrun's RANK before the group is up, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0)


def is_main() -> bool:
    """True on the process that prints and writes (rank 0; the only process without torchrun)."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once per process) and return this rank's device.

    A CUDA device without an index becomes `cuda:LOCAL_RANK`; the group's
    backend is NCCL for CUDA tensors with gloo for CPU ones, or gloo alone
    on CPU. Without torchrun (and no group set up by the caller) `device`
    comes back as it is.
    """
    if not launched() and not active():
        return device
    if device.type == "cuda":
        if device.index is not None and launched():
            raise GenaugError(
                f"under torchrun each process takes the GPU of its LOCAL_RANK; use --device cuda or auto, not {device}"
            )
        # A group the caller set up without torchrun may have no LOCAL_RANK: one GPU per rank, round robin.
        local = _env_int("LOCAL_RANK", rank() % max(1, torch.cuda.device_count()))
        if device.index is None:
            if local >= torch.cuda.device_count():
                raise GenaugError(
                    f"torchrun started local rank {local} but only {torch.cuda.device_count()} CUDA device(s) "
                    "are present; use --nproc_per_node of at most the GPU count"
                )
            device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_available():
        raise GenaugError("torchrun started several processes but this torch build has no torch.distributed")
    if not dist.is_initialized():
        # torch.distributed.nn.functional binds `group=group.WORLD` as its functions' defaults when
        # first imported, and the first optimiser imports it (through torch._dynamo). Imported after
        # the group exists, it would keep the group alive past destroy_process_group: gloo's worker
        # threads then free their last work during interpreter shutdown and abort the process.
        import torch.distributed.nn.functional  # noqa: F401 - imported for its side effect, before the group
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
        try:
            dist.init_process_group(backend=backend)
        except (RuntimeError, ValueError, KeyError) as e:
            raise GenaugError(f"cannot join the torchrun process group: {first_line(e)}") from None
        # Ours to close: without it NCCL warns at exit, and a clean close lets the other ranks go.
        atexit.register(_close)
    return device


def _close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over ranks, in place (unchanged with one process); returns `t`."""
    if active():
        dist.all_reduce(t)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any: a decision all ranks then take alike."""
    if not active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def broadcast_state(module: torch.nn.Module) -> None:
    """Every weight and buffer of `module` replaced, in place, by rank 0's."""
    if not active():
        return
    for t in module.state_dict().values():
        if isinstance(t, torch.Tensor):  # a module's extra state may be any object
            dist.broadcast(t, src=0)


def reduce_gradients(parameters: Sequence[torch.nn.Parameter], share: float, extras: torch.Tensor) -> torch.Tensor:
    """Sum over ranks of `share` x each parameter's `.grad`, written back as its `.grad`, and of `extras` [k].

    One all-reduce of one flat buffer per call (the loop calls this once per
    optimiser step). A parameter no rank has a gradient for keeps `.grad`
    None, as it would in one process (the optimiser then leaves it alone);
    one that only some ranks reached gets the sum of those that did. Returns
    the summed `extras`, in the buffer's dtype, on the parameters' device.
    """
    params = list(parameters)
    device = params[0].device if params else extras.device
    dtype = torch.float32
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    pieces = [
        torch.zeros(p.numel(), dtype=dtype, device=device) if p.grad is None else (p.grad.reshape(-1) * share).to(dtype)
        for p in params
    ]
    has = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=device)
    flat = torch.cat([*pieces, has, extras.to(device=device, dtype=dtype).reshape(-1)])
    if active():
        dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
    reached = flat[offset : offset + len(params)]
    offset += len(params)
    if params and not bool((reached > 0).all()):  # rare: a parameter no rank used this step
        for p, r in zip(params, reached.tolist()):
            if r == 0:
                p.grad = None
    return flat[offset:]


def main_only(work: Callable[[], None], what: str) -> None:
    """Run `work` on rank 0 alone; with a process group, every rank then returns, or fails, with it.

    The ranks agree on the outcome through one all-reduce, which doubles as
    the barrier that keeps them from going on before rank 0 is done; so every
    rank must call this (under torchrun, call `save_model` on all ranks: it
    writes on rank 0 only). Without a group, ranks other than 0 just return.
    """
    failed = False
    error: BaseException | None = None
    if is_main():
        try:
            work()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the other ranks have heard
            failed, error = True, e
    if active():
        t = torch.tensor([1.0 if failed else 0.0])
        try:
            dist.all_reduce(t)
        except RuntimeError as e:  # an NCCL-only group cannot reduce a CPU tensor
            raise GenaugError(f"{what}: the ranks could not agree ({first_line(e)})") from None
        failed = failed or t.item() > 0
    if error is not None:
        raise error
    if failed:
        raise GenaugError(f"{what} failed on rank 0 (its error is in rank 0's output)")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise GenaugError(f"environment variable {name} must be an integer, got {value!r}") from None
