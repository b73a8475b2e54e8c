"""hfs-fast and the options it is built from: activations, the whitening stem."""

import pytest
import torch
from torch import nn

from hfsnet.models import ModelOptionError, create_model
from hfsnet.models.layers import WhiteningStem


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv(cin: int, cout: int, k: int, bias: bool) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(channels: int) -> int:
    return 2 * channels


def test_hfs_fast_parameter_count_by_hand():
    # The whitening stem (3 x 4 patch dims, each eigenvector and its negation: 24 channels) is
    # fixed: buffers, no parameters. Dense layers are Conv(no bias)-BN; phi is a 1x1 conv with
    # a bias; the head reads the pooled outputs of all three stages.
    stage1 = conv(24, 32, 3, False) + bn(32) + conv(24 + 32, 48, 1, True)
    stage2 = (conv(48, 48, 3, False) + bn(48) + conv(96, 48, 3, False) + bn(48)
              + conv(48 + 96, 96, 1, True))
    stage3 = (conv(96, 96, 3, False) + bn(96) + conv(192, 96, 3, False) + bn(96)
              + conv(96 + 192, 192, 1, True))
    head = (48 + 96 + 192) * 10 + 10
    model = create_model("hfs-fast")
    assert n_params(model) == stage1 + stage2 + head + stage3 == 394_106
    assert model.stage_channels() == [48, 96, 192]


def test_hfs_fast_feature_shapes():
    feats = create_model("hfs-fast").forward_features(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 48, 15, 15), (2, 96, 7, 7), (2, 192, 3, 3)]


@pytest.mark.parametrize("act", ["relu", "silu", "gelu"])
def test_activation_changes_no_parameter_count(act):
    base = create_model("hfs-bc-100-12")
    other = create_model("hfs-bc-100-12", activation=act)
    assert n_params(other) == n_params(base)
    kinds = {type(m) for m in other.modules()}
    expected = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}[act]
    assert expected in kinds and (act == "relu" or nn.ReLU not in kinds)


def test_unknown_activation_and_whiten_with_a_conv_stem_are_refused():
    with pytest.raises(ModelOptionError, match="option 'activation': expected one of relu, "
                                               "silu, gelu, got 'tanh'"):
        create_model("hfs", stages=(1,), growth=4, stem=8, activation="tanh")
    with pytest.raises(ModelOptionError, match="pass stem=0"):
        create_model("hfs", stages=(1,), growth=4, stem=8, whiten=True)


def test_whitening_stem_decorrelates_the_patches_it_was_fitted_on():
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.5, 0.2], [0.0, 1.0, 0.7], [0.0, 0.0, 0.3]])
    x = torch.einsum("dc,nchw->ndhw", mix, torch.randn(64, 3, 12, 12))
    x = x + x.roll(1, dims=-1)  # neighbouring pixels correlate too
    stem = WhiteningStem(3)
    stem.eps = 0.0
    stem.train()(x)
    assert bool(stem.fitted)
    out = nn.functional.conv2d(x, stem.weight[:12])  # the 12 non-negated filters, linear part
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = torch.cov(flat.T, correction=0)
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(stem.weight[12:], -stem.weight[:12])


def test_whitening_stem_fits_once_and_never_in_eval_mode():
    stem = WhiteningStem(3).eval()
    stem(torch.randn(2, 3, 8, 8))
    assert not bool(stem.fitted) and not stem.weight.any()
    stem.train()(torch.randn(4, 3, 8, 8))
    fitted = stem.weight.clone()
    stem(torch.randn(4, 3, 8, 8) * 5)
    assert torch.equal(stem.weight, fitted)
