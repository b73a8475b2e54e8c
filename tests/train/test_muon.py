"""Muon: the Newton-Schulz iteration, the combined Muon/SGD optimizer, and --optimizer muon."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hfsnet.train import resolve_config
from hfsnet.train.checkpoint import load_checkpoint
from hfsnet.train.muon import MUON_LR_RATIO, Muon, newton_schulz
from hfsnet.train.optim import ParamGroup, build_optimizer, fused, set_lr_factor

# Where 5 quintic steps put the singular values of matrices whose own singular values are not
# tiny relative to the Frobenius norm: measured 0.68-1.21 over the shapes below (the iteration
# oscillates inside this band rather than converging on 1).
BAND = (0.65, 1.25)


def _with_spectrum(rows: int, cols: int, low: float, seed: int) -> torch.Tensor:
    """A random rows x cols matrix with singular values spread over [low, 1]."""
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=g))
    s = torch.linspace(low, 1.0, k)
    return u @ torch.diag(s) @ v.T


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("matrix", [
    torch.randn(512, 64, generator=torch.Generator().manual_seed(0)),  # tall
    torch.randn(64, 512, generator=torch.Generator().manual_seed(1)),  # wide
    _with_spectrum(128, 128, 0.05, seed=2),  # square (a Gaussian one has near-zero values)
    torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(3)).reshape(32, -1),
])
def test_newton_schulz_singular_values_land_near_one(matrix, dtype):
    x = newton_schulz(matrix, dtype=dtype)  # bf16: the iteration CUDA runs
    assert x.shape == matrix.shape and x.dtype == matrix.dtype
    s = torch.linalg.svdvals(x)
    assert BAND[0] <= s.min() and s.max() <= BAND[1], (s.min(), s.max())
    # singular vectors kept: x = p(G G^T) G with p > 0, so x G^T is symmetric positive definite
    gram = x @ matrix.T
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert torch.allclose(gram, gram.T, atol=tol * gram.abs().max())
    assert torch.linalg.eigvalsh((gram + gram.T) / 2).min() > -tol * gram.abs().max()


def test_newton_schulz_is_transpose_symmetric_and_refuses_non_matrices():
    g = torch.randn(40, 10)
    assert torch.allclose(newton_schulz(g), newton_schulz(g.T).T, atol=1e-6)
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.randn(4, 4, 3))


class TinyNet(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.norm(self.conv(x))).mean((2, 3)))


def _batch(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 3, 6, 6, generator=g) * 0.3
    x[torch.arange(n), y] += 1.0  # the class is the bright channel
    return x, y


def _muon_for(model: nn.Module, lr: float = 0.5, **kw) -> torch.optim.Optimizer:
    return build_optimizer([ParamGroup("all", list(model.parameters()), lr)], "muon",
                           weight_decay=kw.pop("weight_decay", 5e-4), **kw)


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int, seed: int = 0,
           grad_scale: float = 1.0) -> list[float]:
    losses = []
    for i in range(n):
        x, y = _batch(seed=seed + i)
        loss = F.cross_entropy(model(x.to(memory_format=torch.channels_last)
                                     if _is_channels_last(model) else x), y)
        opt.zero_grad(set_to_none=True)
        (loss * grad_scale).backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _is_channels_last(model: nn.Module) -> bool:
    w = model.conv.weight
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def test_build_optimizer_splits_filters_from_the_rest_and_keeps_the_schedule():
    torch.manual_seed(0)
    model = TinyNet()
    opt = _muon_for(model, lr=0.5, no_decay_lr_scale=4.0)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"all", "all.no_decay", "all.muon"}
    assert by_name["all.muon"]["params"] == [model.conv.weight] and by_name["all.muon"]["muon"]
    assert by_name["all"]["params"] == [model.head.weight] and not by_name["all"]["muon"]
    assert not by_name["all.no_decay"]["muon"]
    assert by_name["all.muon"]["lr"] == pytest.approx(0.5 * MUON_LR_RATIO)
    set_lr_factor(opt, 0.5)
    rates = {g["name"]: g["lr"] for g in opt.param_groups}
    assert rates == pytest.approx({"all": 0.25, "all.no_decay": 1.0,
                                   "all.muon": 0.25 * MUON_LR_RATIO})
    assert fused(opt) is opt  # no fused kernel to switch to


def test_sgd_groups_take_torch_nesterov_sgd_steps_exactly():
    torch.manual_seed(0)
    a = nn.Linear(5, 3)
    b = copy.deepcopy(a)
    ours = Muon([{"params": list(a.parameters()), "muon": False}], lr=0.1, momentum=0.9,
                weight_decay=1e-2)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=1e-2)
    for i in range(5):
        x = torch.randn(8, 5, generator=torch.Generator().manual_seed(i))
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_muon_group_refuses_one_dimensional_parameters():
    with pytest.raises(ValueError, match="1-D"):
        Muon([nn.Parameter(torch.zeros(4))])


def test_muon_step_is_orthogonalised_and_scaled_by_the_learning_rate():
    w = nn.Parameter(torch.zeros(16, 4, 3, 3))
    opt = Muon([w], lr=0.1, momentum=0.0)
    w.grad = torch.randn(16, 4, 3, 3) * 1e4  # the step does not grow with the gradient
    opt.step()
    s = torch.linalg.svdvals(w.detach().reshape(16, -1)) / 0.1
    assert BAND[0] <= s.min() and s.max() <= BAND[1]


def test_muon_reduces_a_classification_loss():
    torch.manual_seed(0)
    model = TinyNet()
    losses = _steps(model, _muon_for(model, lr=0.5), 40)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


def test_filters_stay_finite_and_bounded_under_huge_gradients():
    torch.manual_seed(0)
    model = TinyNet()
    # only the Muon part: a scale-free step (the SGD part would follow a huge gradient)
    for p in model.parameters():
        p.requires_grad_(p is model.conv.weight)
    opt = Muon([model.conv.weight], lr=0.05, momentum=0.9, weight_decay=5e-4)
    before = model.conv.weight.detach().clone()
    _steps(model, opt, 50, grad_scale=1e8)
    assert model.conv.weight.isfinite().all()
    assert not torch.equal(model.conv.weight, before)
    # 50 orthogonalised steps of spectral norm <= 1.25 * lr each, whatever the gradient
    moved = torch.linalg.matrix_norm((model.conv.weight - before).reshape(8, -1), ord=2)
    assert moved <= 50 * BAND[1] * 0.05 + 1e-3 * before.norm()


def test_a_channels_last_weight_takes_the_same_step_and_keeps_its_layout():
    torch.manual_seed(0)
    plain = TinyNet()
    last = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    assert _is_channels_last(last)
    opts = _muon_for(plain), _muon_for(last)
    for model, opt in zip((plain, last), opts, strict=True):
        _steps(model, opt, 3)
    assert _is_channels_last(last)
    assert opts[1].state[last.conv.weight]["momentum_buffer"].shape == (8, 3, 3, 3)
    for p, q in zip(plain.parameters(), last.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_the_step_ignores_an_enclosing_bf16_autocast():
    torch.manual_seed(0)
    a = TinyNet()
    b = copy.deepcopy(a)
    opt_a, opt_b = _muon_for(a), _muon_for(b)
    for model in (a, b):
        x, y = _batch()
        F.cross_entropy(model(x), y).backward()
    opt_a.step()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_state_dict_round_trip_resumes_bit_identically():
    torch.manual_seed(0)
    full = TinyNet().to(memory_format=torch.channels_last)
    part = copy.deepcopy(full)
    full_opt, part_opt = _muon_for(full), _muon_for(part)
    _steps(full, full_opt, 4)
    _steps(part, part_opt, 4)
    # a fresh model and optimizer from saved copies, as a resumed run builds them
    saved_model = copy.deepcopy(part.state_dict())
    saved_opt = copy.deepcopy(part_opt.state_dict())
    resumed = TinyNet().to(memory_format=torch.channels_last)
    resumed.load_state_dict(saved_model)
    resumed_opt = _muon_for(resumed)
    resumed_opt.load_state_dict(saved_opt)
    assert [g["muon"] for g in resumed_opt.param_groups] == [False, False, True]
    _steps(full, full_opt, 4, seed=4)
    _steps(resumed, resumed_opt, 4, seed=4)
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(p, q), name


def _small_air(data, **over):
    values = dict(data=str(data), epochs=2, batch_size=16, eval_batch_size=10, lr=0.2,
                  model_options={"widths": [4, 8, 8]}, precision="fp32", channels_last=True,
                  optimizer="muon", lowres_fraction=0.0)  # losses compared at one size
    values.update(over)
    return resolve_config("fast", **values)


def test_a_muon_run_trains_checkpoints_and_resumes_exactly(tiny_folder, tmp_path,
                                                           full_and_resumed):
    cfg = _small_air(tiny_folder, checkpoint_every=1, keep_last=100, deterministic=True)
    full, resumed = full_and_resumed(cfg)
    assert isinstance(full.optimizer, Muon)
    first = full.history[0]["train_loss"]
    assert full.history[-1]["train_loss"] < first
    for (name, a), b in zip(full.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    saved = load_checkpoint(tmp_path / "full").meta["optimizer"]["param_groups"]
    assert {g["name"]: g["muon"] for g in saved} == {"all": False, "all.no_decay": False,
                                                    "all.muon": True}


def test_cli_accepts_optimizer_muon(tiny_folder, tmp_path):
    from hfsnet.cli import main

    out = tmp_path / "cli"
    argv = ["train", "--recipe", "fast", "--data", str(tiny_folder), "--out", str(out),
            "--epochs", "1", "--batch-size", "8", "--quiet", "--model-opt", "widths=[4,4,4]",
            "--optimizer", "muon", "--no-tta-flip"]  # the recipe's bf16 and channels_last
    assert main(argv) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.meta["config"]["optimizer"] == "muon"
    assert any(g["muon"] for g in ckpt.meta["optimizer"]["param_groups"])


def test_the_fast_recipe_trains_its_filters_with_muon_and_optimizer_sgd_restores_sgd(
        tiny_folder, tmp_path):
    from hfsnet.cli import main

    for optimizer, muon_groups in (("muon", True), ("sgd", False)):
        out = tmp_path / optimizer
        argv = ["train", "--recipe", "fast", "--data", str(tiny_folder), "--out", str(out),
                "--epochs", "1", "--batch-size", "8", "--quiet", "--model-opt",
                "widths=[4,4,4]", "--no-tta-flip"]
        assert main(argv + ([] if optimizer == "muon" else ["--optimizer", "sgd"])) == 0
        meta = load_checkpoint(out).meta
        assert meta["config"]["optimizer"] == optimizer
        assert any(g.get("muon", False) for g in meta["optimizer"]["param_groups"]) == muon_groups
