"""The one pool-concat-linear head every family uses: pooling, layout, outputs, weights."""

import pytest
import torch
import torch.nn.functional as F

from hfsnet.models import create_model
from hfsnet.models.head import LevelHead, level_widths, pool_levels


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_2x2_pooling_is_channel_major_quadrant_means():
    stage = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    pooled = pool_levels([stage], [1], "2x2")
    # channel 0 holds 0..15 row-major: top-left quadrant {0, 1, 4, 5} averages 2.5
    assert pooled.tolist() == [[2.5, 4.5, 10.5, 12.5, 18.5, 20.5, 26.5, 28.5]]


def test_pools_and_widths_of_chosen_levels():
    a, b = torch.randn(2, 3, 5, 5), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(pool_levels([a, b], [1, 2], "gap"),
                               torch.cat([a.mean((2, 3)), b.mean((2, 3))], 1))
    torch.testing.assert_close(pool_levels([a, b], [2], "max"), b.amax((2, 3)))
    assert level_widths([3, 4], [1, 2], "2x2") == [12, 16]
    assert level_widths([3, 4], [2], "max") == [4]


def test_gap_with_a_hidden_layer_is_the_seed_fusion_head():
    """hfs-seed: both stages average-pooled, Linear-ReLU-Dropout, classifier (with biases)."""
    torch.manual_seed(0)
    model = create_model("hfs-seed").eval()
    x = torch.randn(3, 3, 32, 32)
    first, second = model.forward_features(x)
    pooled = torch.cat([first.mean((2, 3)), second.mean((2, 3))], 1)
    hidden, classifier = model.head.hidden[0], model.head.classifier
    expected = classifier(F.relu(hidden(pooled)))
    torch.testing.assert_close(model(x), expected)
    assert model.head.first_linear is hidden


def test_max_pooling_with_a_scale_is_the_air_head():
    torch.manual_seed(0)
    model = create_model("hfs-air", widths=[4, 8, 8]).eval()
    x = torch.randn(2, 3, 32, 32)
    pooled = torch.cat([f.amax((2, 3)) for f in model.forward_features(x)], 1)
    torch.testing.assert_close(model(x), F.linear(pooled, model.head.classifier.weight) / 9)
    assert model.head.classifier.bias is None and model.head.first_linear is model.head.classifier


def test_dropout_without_a_hidden_layer_leaves_the_classifier_first():
    head = LevelHead([4, 6], [1, 2], "gap", 3, dropout=0.5)
    assert head.first_linear is head.classifier and head.classifier.in_features == 10
    features = [torch.randn(2, 4, 3, 3), torch.randn(2, 6, 2, 2)]
    torch.testing.assert_close(head.eval()(features), head.classifier(head.pooled(features)))


@pytest.mark.parametrize("levels,pool", [([], "gap"), ([0], "gap"), ([3], "gap"), ([1], "avg")])
def test_bad_levels_or_pool_are_refused(levels, pool):
    with pytest.raises(ValueError, match="levels must be|pool must be"):
        LevelHead([4, 6], levels, pool, 3)


@pytest.mark.parametrize("name,params,head_keys", [
    ("hfs-seed", 152_138, ["hidden.0.weight", "hidden.0.bias", "classifier.weight",
                           "classifier.bias"]),
    ("seed-cnn", 890_410, ["hidden.1.weight", "hidden.1.bias", "classifier.weight",
                           "classifier.bias"]),
    ("hfs-air-s", 567_552, ["classifier.weight"]),
    ("air-plain-s", 497_792, ["classifier.weight"]),
    ("hfs-fast", 394_106, ["classifier.weight", "classifier.bias"]),
    ("hfs-bc-100-12", 771_742, ["classifier.weight", "classifier.bias"]),
])
def test_parameter_counts_and_head_weight_names_are_unchanged(name, params, head_keys):
    """The counts at 3x32x32 and 10 classes, and the names saved checkpoints hold."""
    model = create_model(name)
    assert n_params(model) == params
    assert list(model.head.state_dict()) == head_keys
