import numpy as np
import pytest
import torch

from hfsnet.models.head import LevelHead
from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.sgd import SgdOptions, fit_sgd


def blobs(n=300, d=8, seed=0):
    """Three separable classes on columns of very different scales and offsets."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    x = np.eye(3, d)[labels] * 4 + rng.normal(0, 1, (n, d))
    return (x * np.geomspace(0.01, 100, d) + 50).astype(np.float16), labels.astype(np.int64)


def raw_accuracy(head, x, y):
    with torch.no_grad():
        scores = head.forward_descriptor(torch.from_numpy(x.astype(np.float32)))
    return float((scores.argmax(1).numpy() == y).mean())


@pytest.mark.parametrize("hidden", [0, 16])
def test_head_learns_and_reads_raw_descriptors_after_folding(hidden):
    x, y = blobs()
    torch.manual_seed(0)
    head = LevelHead([8], [1], "gap", 3, hidden=hidden)
    fit = fit_sgd(head, x, y, SgdOptions(epochs=15, batch_size=32, lr=1e-2))
    assert len(fit.epoch_seconds) == 15
    assert fit.train_loss[-1] < 0.5 * fit.train_loss[0]
    x_test, y_test = blobs(seed=1)
    assert raw_accuracy(head, x_test, y_test) > 0.9  # standardisation folded into the head


def test_same_seed_same_head_and_threads_restored():
    x, y = blobs()
    threads = torch.get_num_threads()
    heads = []
    for _ in range(2):
        torch.manual_seed(1)
        heads.append(LevelHead([8], [1], "gap", 3))
        fit_sgd(heads[-1], x, y, SgdOptions(epochs=2, seed=4))
    assert torch.equal(heads[0].classifier.weight, heads[1].classifier.weight)
    assert torch.get_num_threads() == threads


def test_bad_options_name_the_flag():
    x, y = blobs(n=10)
    with pytest.raises(CacheError, match="--lr must be > 0"):
        fit_sgd(LevelHead([8], [1], "gap", 3), x, y, SgdOptions(lr=0))
