"""Training on a real CIFAR-10 subset (slow: run with `make test-slow`)."""

import pytest

from hfsnet.cli import main
from tests.conftest import SHARED_CIFAR
from tests.helpers import last_json


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="needs ../shared/datasets/cifar10-jpg.tar.gz")
def test_hfs_seed_learns_cifar10_well_above_chance(tmp_path, capsys):
    # 5,000 stratified training images, 2 epochs: well above the 10% of chance in about a minute.
    assert main(["train", "--model", "hfs-seed", "--data", str(SHARED_CIFAR), "--epochs", "2",
                 "--limit-train", "5000", "--out", str(tmp_path / "run"), "--quiet",
                 "--json"]) == 0
    result = last_json(capsys)
    assert result["test_acc"] > 0.30
