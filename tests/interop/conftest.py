"""A user's own networks as an importable module, and a run of one trained from the CLI."""

from __future__ import annotations

import importlib
import textwrap

import pytest

from hfsnet.cli import main
from tests.helpers import last_json

USER_MODULE = "hfsnet_test_usernets"
RESNET = f"{USER_MODULE}:tiny_resnet"
# NCHW: on an AVX2-only CPU (no AVX-512) oneDNN's channels-last jit_avx2_1x1 weight-gradient
# kernel corrupts the heap for the tiny ResNet's 6->12 stride-2 1x1 conv (SIGABRT/SIGSEGV in
# backward, torch 2.13.0; the same tests pass with --no-channels-last); these tests are about
# user networks, not that kernel.
FAST = ["--epochs", "3", "--batch-size", "16", "--lr", "0.003", "--precision", "fp32",
        "--no-channels-last", "--quiet"]

# Written to a file so that `--model hfsnet_test_usernets:tiny_resnet` imports it like a user's
# own module; the registry keeps one entry per name for the whole session, hence one module.
SOURCE = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Block(nn.Module):
        """A ResNet basic block: two 3x3 convs and a residual branch, summed in place."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += x if self.down is None else self.down(x)
            return self.relu(out)


    class TinyResNet(nn.Module):
        def __init__(self, width=8, num_classes=7):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
            self.layer1 = Block(width, width, 1)
            self.layer2 = Block(width, 2 * width, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            x = self.layer2(self.layer1(self.stem(x)))
            return self.fc(self.pool(x).flatten(1))


    class Branchy(nn.Module):
        """Python control flow on tensor values in forward: torch.fx cannot trace this."""

        def __init__(self):
            super().__init__()
            self.common = nn.Conv2d(3, 6, 3, padding=1)
            self.rare = nn.Conv2d(3, 6, 5, padding=2)
            self.deep = nn.Conv2d(6, 12, 3, stride=2, padding=1)

        def forward(self, x):
            if x.amin() < -100:
                y = self.rare(x)
            else:
                y = self.common(x)
            return self.deep(F.relu(y))


    def tiny_resnet(width=8):
        return TinyResNet(width)


    def branchy():
        return Branchy()


    def not_a_network():
        return 42
''')


@pytest.fixture(scope="session")
def usernets(tmp_path_factory):
    """The user module, importable by name for the whole session."""
    root = tmp_path_factory.mktemp("usercode")
    (root / f"{USER_MODULE}.py").write_text(SOURCE)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        yield importlib.import_module(USER_MODULE)


@pytest.fixture
def shared_run(usernets, tiny_folder, tmp_path, capsys):
    """(run directory, result) of the user's tiny ResNet shared at two levels, trained from
    the CLI."""
    run = tmp_path / "run"
    assert main(["train", "--model", RESNET, "--share-layers", "layer1,layer2",
                 "--model-opt", "width=6", "--model-opt", "share_proj=16",
                 "--data", str(tiny_folder), "--out", str(run), "--json", *FAST]) == 0
    return run, last_json(capsys)
