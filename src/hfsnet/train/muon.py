"""Muon: momentum orthogonalised by Newton-Schulz (Keller Jordan, 2024).

For a weight matrix W (a conv filter bank read as out x (in*kh*kw)), Muon keeps a Nesterov
momentum M of the gradient and steps along an approximation of its orthogonal polar factor:
with M = U S V^T, the update is close to U V^T, every singular direction moved by the same
amount. The factor comes from a quintic Newton-Schulz iteration X <- aX + (bA + cA^2)X with
A = X X^T, started from M / ||M||_F (so every singular value is <= 1) and run on the wide
orientation (X X^T is the smaller Gram matrix). The coefficients (a, b, c) = (3.4445, -4.7750,
2.0315) maximise the slope at zero rather than converge: after 5 steps the singular values
land in a band around 1 (about 0.7-1.2, see the tests) instead of on 1, which costs nothing in
accuracy and saves iterations.

References: K. Jordan, "Muon: An optimizer for hidden layers in neural networks" (2024,
kellerjordan.github.io/posts/muon), and the CIFAR-10 speed record ``airbench94_muon.py`` in
github.com/KellerJordan/cifar10-airbench, which trains the conv filters with Muon (lr 0.24,
Nesterov momentum 0.6, 3 Newton-Schulz steps, batch 2000, each filter bank rescaled to
Frobenius norm sqrt(out channels) before its step) and everything else (norm shifts, the
whitening bias, the head) with Nesterov SGD.

:class:`Muon` here is also that combination: each param group carries ``"muon": True`` (the
orthogonalised step) or ``False`` (Nesterov SGD, with the same arithmetic as
``torch.optim.SGD(nesterov=True)``), so one optimizer, one state_dict and one learning-rate
schedule cover both kinds of parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# How hfsnet's ``--lr`` maps to Muon's rate: a Muon group learns at MUON_LR_RATIO times the rate
# of its named ParamGroup. An orthogonalised step does not scale with the gradient, so its rate
# is absolute (the record's 0.24 holds for a summed or a mean loss alike), whereas the SGD rates
# are in mean-loss units. The ratio is chosen so that the fast recipes' SGD rate, lr 1.5 (airbench
# 94's rate for these same filters, see hfsnet.train.config), hands Muon the record's 0.24.
MUON_LR_RATIO = 0.24 / 1.5


def _iteration_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA, as the original: the iteration only needs a loose band of singular values
    and bf16 matmuls run on tensor cores. fp32 on CPU, where bf16 matmuls are slower (the
    128 x 1152 products of one step: 2.7 ms in bf16 vs 1.1 ms in fp32 on one AVX-512 core)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7, *,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """An approximate orthogonal polar factor of the 2-D ``G`` (singular values near 1, singular
    vectors kept), in ``G``'s shape and dtype. ``dtype``: of the iteration's matmuls (default:
    bf16 on CUDA, fp32 elsewhere)."""
    if G.ndim != 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {tuple(G.shape)}")
    a, b, c = NS_COEFFICIENTS
    tall = G.size(0) > G.size(1)
    X = G.to(dtype or _iteration_dtype(G.device))
    if tall:
        X = X.T
    X = X / (X.norm() + eps)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    if tall:
        X = X.T
    return X.to(G.dtype)


def _no_autocast(params: Iterable[torch.Tensor]) -> contextlib.ExitStack:
    """Autocast off for every device the parameters live on: a step called inside the
    training's bf16 region must still do its momentum and update arithmetic in fp32."""
    stack = contextlib.ExitStack()
    for device_type in sorted({p.device.type for p in params}):
        stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
    return stack


class Muon(torch.optim.Optimizer):
    """Muon on the groups flagged ``"muon": True`` (the default), Nesterov SGD on the others.

    Muon groups: params of two or more dimensions, each read as rows = ``shape[0]`` by the rest.
    The step is ``p <- p * (1 - lr * weight_decay) - lr * s * NS(g + momentum * buf)`` with
    ``buf <- momentum * buf + g``, ``NS`` :func:`newton_schulz` and ``s = max(1, rows /
    cols) ** 0.5`` (the factor of Jordan's general Muon, which the CIFAR record leaves out: it
    is 1 for every filter bank with more inputs than outputs), so the weight decay is
    decoupled. ``normalize=True`` rescales each weight to Frobenius norm
    sqrt(rows) before its step, as the record does to its filters: only correct where a norm
    layer follows, which makes the weight's scale irrelevant to the function.

    SGD groups: ``torch.optim.SGD(nesterov=True)``'s step, weight decay as L2 in the gradient.

    Both keep one ``momentum_buffer`` per parameter in ``state``, so ``state_dict`` /
    ``load_state_dict`` resume exactly; there is no fused kernel (``fused=`` is not accepted).
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, weight_decay: float = 0.0, ns_steps: int = 5,
                 normalize: bool = False, muon: bool = True) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or ns_steps < 1:
            raise ValueError(f"Muon: invalid lr {lr}, momentum {momentum}, weight_decay "
                             f"{weight_decay} or ns_steps {ns_steps}")
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                    "weight_decay": weight_decay, "ns_steps": ns_steps, "normalize": normalize,
                    "muon": muon}
        super().__init__(params, defaults)
        for group in self.param_groups:
            flat = [p for p in group["params"] if p.ndim < 2]
            if group["muon"] and flat:
                raise ValueError(f"Muon: a muon group holds a {flat[0].ndim}-D parameter; "
                                 f"put biases and norm parameters in a group with muon=False")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"]]
        with _no_autocast(params):
            for group in self.param_groups:
                take_step = self._muon_step if group["muon"] else self._sgd_step
                for p in group["params"]:
                    if p.grad is not None:
                        take_step(p, group)
        return loss

    def _momentum(self, p: torch.Tensor, g: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """Update the buffer with ``g``; the direction to step along (Nesterov or heavy ball)."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"]
        m = group["momentum"]
        buf.mul_(m).add_(g)
        return g.add(buf, alpha=m) if group["nesterov"] else buf

    def _sgd_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        g = p.grad
        if group["weight_decay"]:
            g = g.add(p, alpha=group["weight_decay"])
        p.add_(self._momentum(p, g, group), alpha=-group["lr"])

    def _muon_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        direction = self._momentum(p, p.grad, group)
        rows = p.shape[0]
        # reshape reads the logical (out, in, kh, kw) order whatever the memory layout, and
        # add_ writes back element by element, so a channels-last p keeps its layout and values.
        matrix = direction.reshape(rows, -1)
        scale = max(1.0, rows / matrix.shape[1]) ** 0.5
        update = newton_schulz(matrix, group["ns_steps"])
        lr = group["lr"]
        if group["normalize"]:
            p.mul_(rows ** 0.5 / p.norm().clamp_min(1e-12))
        if group["weight_decay"]:
            p.mul_(1 - lr * group["weight_decay"])
        p.add_(update.view_as(p), alpha=-lr * scale)
