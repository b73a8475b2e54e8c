"""Multi-process training on PyTorch's own engine: torchrun sets RANK/WORLD_SIZE, we follow.

gloo on the CPU, NCCL on CUDA. Every rank sees a disjoint shard of every global batch (see
``BatchLoader``), DistributedDataParallel averages gradients, and only rank 0 writes files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from hfsnet.errors import HfsnetError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; ``world_size`` 1 means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank: ranks must agree on when to stop."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (float64/int64 on the CPU for gloo)."""
        if not self.enabled:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out)
        return out


def is_main_process() -> bool:
    """Whether this is torchrun's rank 0 (or the only process): the one that reports."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device_kind: str) -> DistContext:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
    return DistContext(rank, world_size, local_rank)


def agree(value: Any, context: DistContext) -> Any:
    """Rank 0's ``value`` on every rank (unchanged in one process): for choices a rank measures,
    such as ``--precision auto``, which must not differ between ranks."""
    if not context.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def close_distributed() -> None:
    """Leave the process group together: a rank that exits while another still talks to it
    can make gloo abort the other one ("connection closed by peer") after all work is done."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose batch statistics cover the global batch of all ranks, on any device.

    torch's ``SyncBatchNorm`` only runs on accelerators; this one sums per-channel count, sum and
    sum of squares with a differentiable all-reduce, so autograd produces the synchronised
    backward as well. Outside training, or in a single process, it is a plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x.float()  # statistics in fp32 even under bf16 autocast
        local = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)),
                           xf.new_full((1,), x.numel() / x.shape[1])])
        total = dist_fn.all_reduce(local)
        c = x.shape[1]
        count = total[-1]
        mean = total[:c] / count
        var = total[c:2 * c] / count - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * count / (count - 1).clamp(min=1)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        shape = (1, c, 1, 1)
        scale = torch.rsqrt(var + self.eps).view(shape)
        y = (x - mean.view(shape).to(x.dtype)) * scale.to(x.dtype)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def convert_sync_batchnorm(model: nn.Module, device_kind: str) -> nn.Module:
    """Synchronise every BatchNorm2d across ranks: torch's own on CUDA, ours on the CPU."""
    if device_kind == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device_kind)
    return model


def launch_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """Re-run this command under torchrun with ``nproc`` local processes; its exit code."""
    if nproc < 1:
        raise HfsnetError(f"--nproc must be >= 1, got {nproc}")
    inner = list(argv)
    at = next(i for i, a in enumerate(inner) if a == "--nproc" or a.startswith("--nproc="))
    del inner[at : at + (1 if "=" in inner[at] else 2)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "hfsnet", "--", *inner]
    return subprocess.call(command)
