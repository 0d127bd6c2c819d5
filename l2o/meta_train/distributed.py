"""Multi-process meta-training over `torch.distributed`: each rank unrolls its own task groups.

The run's task groups form one global list (families × `groups_per_family` replicas, each replica
with its own group id and hence its own tasks); rank r unrolls the groups at positions r, r+W, …
of that list. Estimators sum their per-task terms locally and `Collective.sum_*` all-reduces them, with
the count of finite tasks all-reduced *before* the division, so a W-process run computes the same
average a single process would over the union of the groups (up to float summation order). Every
rank then applies the same update, so meta-params stay identical without broadcasting them; rank 0
alone logs and writes checkpoints (gathering the other ranks' task-group state into one file, so a
run can resume on any number of processes when `groups_per_family` is set explicitly).

Launch with torchrun (gloo on CPU, nccl on CUDA; `--device cuda` then uses GPU `LOCAL_RANK`):

    torchrun --standalone --nproc-per-node 2 -m l2o.cli meta-train --config C.toml --out DIR
    python -m l2o.meta_train.launch --nproc 2 --config C.toml --out DIR     # the same (launch.py)
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from l2o.errors import ConfigError


class Collective:
    """One process: every reduction is the identity (the base the distributed version overrides)."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum_floats(self, values: Sequence[float]) -> List[float]:
        return [float(v) for v in values]

    def sum_tree(self, tree: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return tree

    def gather(self, obj: Any) -> Optional[List[Any]]:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
        return [obj]

    def barrier(self) -> None:
        pass


LOCAL = Collective()


class ProcessGroupCollective(Collective):
    """All-reduce / gather over the default `torch.distributed` process group."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist, self.device = dist, device
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def sum_floats(self, values: Sequence[float]) -> List[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t)
        return t.tolist()

    def sum_tree(self, tree: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """One all-reduce per dtype over the flattened tree (not one per tensor: latency dominates)."""
        out: Dict[str, Tensor] = {}
        by_dtype: Dict[torch.dtype, List[str]] = {}
        for k, v in tree.items():
            by_dtype.setdefault(v.dtype, []).append(k)
        for keys in by_dtype.values():
            flat = torch.cat([tree[k].reshape(-1) for k in keys])
            self.dist.all_reduce(flat)
            offset = 0
            for k in keys:
                n = tree[k].numel()
                out[k] = flat[offset : offset + n].view_as(tree[k])
                offset += n
        return {k: out[k] for k in tree}

    def gather(self, obj: Any) -> Optional[List[Any]]:
        received = [None] * self.world_size if self.is_main else None
        self.dist.gather_object(obj, received, dst=0)
        return received

    def barrier(self) -> None:
        self.dist.barrier()


def from_env(device: torch.device) -> tuple:
    """(collective, device) for this process: `LOCAL` unless launched by torchrun with WORLD_SIZE > 1,
    in which case the default process group is initialized (gloo on CPU, nccl on CUDA) and a CUDA
    device becomes this rank's GPU (`LOCAL_RANK`)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not (dist.is_available() and dist.is_initialized()):
        return LOCAL, device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        if device.index >= torch.cuda.device_count():  # else CUDA's "invalid device ordinal" traceback
            raise ConfigError(
                f"rank {os.environ.get('RANK', '?')} would use GPU {device.index}, but torch sees "
                f"{torch.cuda.device_count()} CUDA device(s): run at most one process per GPU with --device cuda"
            )
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ProcessGroupCollective(device), device
