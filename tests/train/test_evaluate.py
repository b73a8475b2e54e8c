import torch

from hfsnet.train.evaluate import summarize


def test_summary_by_hand():
    # true: 0 0 1 1 2 ; predicted: 0 1 1 1 0
    logits = torch.eye(3)[torch.tensor([0, 1, 1, 1, 0])] * 5
    labels = torch.tensor([0, 0, 1, 1, 2])
    result = summarize(logits, labels, 3)
    assert result.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert result.acc == 0.6
    assert result.per_class_acc == [0.5, 1.0, 0.0]
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert result.loss == expected_loss
    assert result.count == 5
