"""Building blocks shared by the model families: dense stages, the phi projection, the stem."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

ACTIVATIONS = ("relu", "silu", "gelu")


def activation(name: str, *, inplace: bool = False) -> nn.Module:
    """``relu`` or ``silu`` (in place where the caller allows it), or ``gelu`` (erf form: on
    this CPU in bf16 its backward is 1.5x faster than the tanh approximation's; SiLU's is
    another 2x faster, as fast as ReLU's)."""
    if name == "relu":
        return nn.ReLU(inplace=inplace)
    if name == "silu":
        return nn.SiLU(inplace=inplace)
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def conv_unit(in_ch: int, out_ch: int, kernel: int, *, norm: bool, preact: bool,
              act: str = "relu") -> nn.Sequential:
    """Conv with its norm and activation: BN-act-Conv (``preact``, DenseNet) or Conv-BN-act
    (seed)."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=not norm)
    if preact:
        pre = [nn.BatchNorm2d(in_ch), activation(act, inplace=True)] if norm else [activation(act)]
        return nn.Sequential(*pre, conv)
    post = [nn.BatchNorm2d(out_ch)] if norm else []
    return nn.Sequential(conv, *post, activation(act, inplace=True))


class DenseLayer(nn.Module):
    """One layer of a dense stage: reads the concatenation of everything before it in the stage.

    With ``bottleneck`` > 0 a 1x1 conv first squeezes the concatenation to ``bottleneck * growth``
    channels (DenseNet-B). With ``memory_efficient`` the cheap part (concatenation, norm, ReLU,
    1x1 conv) is recomputed in backward instead of stored, so stored activations grow linearly
    with the number of layers instead of quadratically.
    """

    def __init__(
        self,
        in_ch: int,
        growth: int,
        *,
        bottleneck: int = 0,
        norm: bool = True,
        preact: bool = True,
        dropout: float = 0.0,
        memory_efficient: bool = False,
        act: str = "relu",
    ) -> None:
        super().__init__()
        width = bottleneck * growth if bottleneck else in_ch
        # ``squeeze`` is everything before the 3x3 conv: with preact that includes the 3x3
        # conv's own norm+ReLU, so the memory-efficient path stores only the 3x3 conv's input.
        squeeze: list[nn.Module] = []
        if bottleneck:
            squeeze += conv_unit(in_ch, width, 1, norm=norm, preact=preact, act=act)
        if preact:
            squeeze += [nn.BatchNorm2d(width)] if norm else []
            squeeze.append(activation(act, inplace=bool(bottleneck)))  # never in place on input
            self.grow: nn.Module = nn.Conv2d(width, growth, 3, padding=1, bias=not norm)
        else:
            self.grow = conv_unit(width, growth, 3, norm=norm, preact=False, act=act)
        self.squeeze = nn.Sequential(*squeeze)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.memory_efficient = memory_efficient

    def _squeeze(self, *features: torch.Tensor) -> torch.Tensor:
        return self.squeeze(torch.cat(features, 1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and torch.is_grad_enabled():
            squeezed = checkpoint(self._squeeze, *features, use_reentrant=False)
        else:
            squeezed = self._squeeze(*features)
        return self.dropout(self.grow(squeezed))


class DenseStage(nn.Module):
    """``n_layers`` dense layers; returns the concatenation of the input and every layer output."""

    def __init__(self, in_ch: int, growth: int, n_layers: int, **layer_options: object) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_ch + i * growth, growth, **layer_options)  # type: ignore[arg-type]
            for i in range(n_layers)
        )
        self.out_channels = in_ch + n_layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


def projection(in_ch: int, out_ch: int, *, norm: bool, preact: bool,
               act: str = "relu") -> nn.Sequential:
    """The seed's phi: a learned 1x1 conv compressing a stage's concatenation.

    Seed style (no ``preact``) it is linear, with a bias; DenseNet style it is BN-act-Conv1x1.
    """
    conv = nn.Conv2d(in_ch, out_ch, 1, bias=not (norm and preact))
    if preact:
        pre = [nn.BatchNorm2d(in_ch), activation(act, inplace=True)] if norm else [activation(act)]
        return nn.Sequential(*pre, conv)
    return nn.Sequential(conv)


class WhiteningStem(nn.Module):
    """A fixed 2x2 convolution (no padding) that whitens image patches, then an activation.

    Its filters are the eigenvectors of the covariance of the 12-dimensional 2x2x3 patches
    (each also negated, so ``out_channels`` = 2 x 12 = 24), scaled by 1/sqrt(eigenvalue + eps):
    the first layer starts out decorrelated, which the fastest CIFAR-10 trainers (Keller
    Jordan's airbench, tysam-code's hlb-CIFAR10) find worth several epochs. The filters are
    computed from the first training batch the module sees and kept as buffers (not trained,
    saved in checkpoints, broadcast from rank 0 under DDP).

    ``bias``: a trained bias per output channel (the parameter ``bias``), drawn as a conv's
    default, uniform in +-1/sqrt(fan-in). airbench94_muon trains it for its first 3 epochs
    only (see ``hfsnet.train.whiten_bias``). Off by default: a stem without it has no
    parameters, so checkpoints of the other nets keep their keys.
    """

    def __init__(self, in_channels: int, act: str = "relu", eps: float = 5e-4, *,
                 bias: bool = False) -> None:
        super().__init__()
        patch = in_channels * 4
        self.out_channels = 2 * patch
        self.eps = eps
        self.register_buffer("weight", torch.zeros(self.out_channels, in_channels, 2, 2))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.bias: nn.Parameter | None = None
        if bias:
            bound = patch ** -0.5
            self.bias = nn.Parameter(torch.empty(self.out_channels).uniform_(-bound, bound))
        self.act = activation(act, inplace=True)

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set the filters from the patches of the (normalised) images ``x``."""
        patches = x.float().unfold(2, 2, 1).unfold(3, 2, 1)  # N x C x H' x W' x 2 x 2
        c = patches.shape[1]
        flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * 4).double()
        flat = flat - flat.mean(0)
        eigenvalues, eigenvectors = torch.linalg.eigh(flat.T @ flat / len(flat))
        filters = (eigenvectors / (eigenvalues + self.eps).sqrt()).T.reshape(-1, c, 2, 2)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.dtype))
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.fitted:
            with torch.autocast(x.device.type, enabled=False):  # the eigensolve needs fp64
                self.fit(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self.act(F.conv2d(x, self.weight.to(x.dtype), bias))
