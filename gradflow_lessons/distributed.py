"""Gradient statistics across processes: DDP (replicated gradients) and FSDP2 (sharded ones).

Under DDP every rank holds the whole, already averaged gradient after ``backward()``, so a
norm taken on one rank is the norm: nothing to gather. Under FSDP2 (``fully_shard``)
parameters and gradients are ``DTensor``s split along dim 0 (``Shard(0)``): each rank holds
rows of every tensor, and ``||g|| = sqrt(sum_rank ||g_rank||^2)``. The toolkit takes its
statistics of the local shards (``local``) and combines the sharded ones with ONE collective
per call (``gather_sharded``): the per-rank values of every sharded tensor travel in one
tensor, and each is combined by its own rule (a norm, a sum, a min or a max).

Helpers only; ``GradientMonitor``, the clippers and ``diagnose`` call them. Nothing here
runs a collective unless a tensor is sharded, so one process pays nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NORM, SUM, MIN, MAX = 0, 1, 2, 3
"""How a per-rank value combines into the whole tensor's: ``sqrt(sum x_r^2)``, ``sum x_r``,
``min x_r``, ``max x_r``."""

ROW_RULES = (NORM, SUM, MAX, SUM)
"""How ``GradientMonitor``'s per-parameter rows combine: L2 norm, L1 norm, max |g|, non-zeros."""


_DTENSOR: list[type | None] = []


def _dtensor_type() -> type | None:
    if not _DTENSOR:  # imported once, on first use: importing torch.distributed is slow
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:  # torch built without distributed support
            DTensor = None  # noqa: N806
        _DTENSOR.append(DTensor)
    return _DTENSOR[0]


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` split over ranks (FSDP2's parameters and gradients)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor) and any(
        p.is_shard() for p in tensor.placements)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor``: the local shard of a ``DTensor``, else ``tensor`` itself."""
    dtensor = _dtensor_type()
    return tensor.to_local() if dtensor is not None and isinstance(tensor, dtensor) else tensor


def shard_group(tensors: Sequence[torch.Tensor]) -> object | None:
    """The process group the sharded tensors among ``tensors`` are split over (None: none is).

    Raises:
        ValueError: tensors sharded over different groups, or over two mesh dimensions at once
            (2-D tensor parallelism), whose norms this toolkit does not combine.
    """
    groups = []
    for t in tensors:
        if not is_sharded(t):
            continue
        dims = [d for d, p in enumerate(t.placements) if p.is_shard()]
        if len(dims) > 1:
            raise ValueError(
                f"a parameter is sharded over {len(dims)} mesh dimensions ({t.placements}); the toolkit "
                "combines shards over one dimension (FSDP2, or HSDP's shard dimension) only: take its "
                "statistics on the full tensor (t.full_tensor()) instead")
        group = t.device_mesh.get_group(dims[0])
        if all(g is not group for g in groups):
            groups.append(group)
    if len(groups) > 1:
        raise ValueError("parameters are sharded over different process groups; monitor each "
                         "FSDP2 mesh with its own GradientMonitor")
    return groups[0] if groups else None


def gather_sharded(values: torch.Tensor, how: Sequence[int], group: object) -> torch.Tensor:
    """Combine per-rank ``values`` [L] into the whole tensors' values [L], entry ``i`` by rule
    ``how[i]`` (``NORM``, ``SUM``, ``MIN``, ``MAX``), with one ``all_gather`` over ``group``.

    Every rank of ``group`` must call it with the same ``L`` and ``how``. Returns float64 on
    ``values``' device."""
    import torch.distributed as dist

    values = values.detach().to(torch.float64).reshape(-1)
    world = dist.get_world_size(group)
    parts = [torch.empty_like(values) for _ in range(world)]
    dist.all_gather(parts, values, group=group)  # the one collective
    table = torch.stack(parts)  # [world, L]
    rule = torch.as_tensor(list(how), device=values.device)
    combined = torch.where(rule == NORM, table.square().sum(0).sqrt(), table.sum(0))
    combined = torch.where(rule == MIN, table.amin(0), combined)
    return torch.where(rule == MAX, table.amax(0), combined)


def sharded_total_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``||(t_1, ..., t_k)||_2`` of tensors some of which are sharded: the squared norms of
    the local shards summed with one ``all_reduce``, plus the unsharded ones' (accumulated in
    float64). 0-d float64 on the first local shard's device; every rank gets the same value."""
    shards = [local(t) for t in tensors]
    device = shards[0].device
    squares = torch.stack([n.to(device) for n in torch._foreach_norm(shards, dtype=torch.float64)]) ** 2
    split = torch.tensor([is_sharded(t) for t in tensors], device=device)
    spread = sum_across(squares[split].sum(), shard_group(tensors))
    return (spread + squares[~split].sum()).sqrt()


def sum_across(values: torch.Tensor, group: object) -> torch.Tensor:
    """``values`` summed over the ranks of ``group`` (one ``all_reduce``; a copy is reduced)."""
    import torch.distributed as dist

    total = values.detach().clone()
    dist.all_reduce(total, group=group)
    return total


def keeps_history(keep_on: int | str) -> bool:
    """Whether this process keeps a monitor's history: ``keep_on="all"`` (every rank) or a rank
    number (only that rank; every rank when ``torch.distributed`` is not initialised).

    Raises:
        ValueError: ``keep_on`` is neither ``"all"`` nor a rank of the default group.
    """
    import torch.distributed as dist

    if keep_on == "all":
        return True
    if isinstance(keep_on, bool) or not isinstance(keep_on, int):
        raise ValueError(f"keep_on={keep_on!r}: pass 'all' (every rank keeps the history) or a rank "
                         "number such as 0 (only that rank keeps it)")
    if not (dist.is_available() and dist.is_initialized()):
        return True
    if not 0 <= keep_on < dist.get_world_size():
        raise ValueError(f"keep_on={keep_on} is not a rank of this job (world size "
                         f"{dist.get_world_size()}); pass 'all' or a rank in 0..{dist.get_world_size() - 1}")
    return dist.get_rank() == keep_on
