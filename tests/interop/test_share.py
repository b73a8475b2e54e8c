import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hfsnet import share
from hfsnet.models import FeatureClassifier
from hfsnet.models.share import ShareError, tappable_layers


def test_tappable_layers_lists_maps_and_vectors_with_shapes(usernets):
    shapes = tappable_layers(usernets.TinyResNet(width=8), (3, 32, 32))
    assert shapes["stem"] == (8, 32, 32)
    assert shapes["layer1"] == (8, 32, 32)
    assert shapes["layer2.conv1"] == (16, 16, 16)  # stride 2
    assert shapes["layer2"] == (16, 16, 16)
    assert shapes["fc"] == (7,)
    names = list(shapes)
    assert names.index("layer1") < names.index("layer2") < names.index("fc")


def test_shared_resnet_has_the_builtin_interface(usernets):
    net = usernets.TinyResNet(width=8)
    model = share(net, layers=["layer2", "layer1"], num_classes=3, proj=32)
    assert isinstance(model, FeatureClassifier)
    assert model.stage_names() == ["layer1", "layer2"]  # shallowest first, whatever the order
    assert model.stage_channels() == [8, 16]
    x = torch.randn(4, 3, 32, 32)
    features = model.forward_features(x)
    assert [tuple(f.shape) for f in features] == [(4, 8, 32, 32), (4, 16, 16, 16)]
    assert model(x).shape == (4, 3)
    assert model.num_features == 32 and model.num_classes == 3
    assert model.head.classifier.in_features == 32
    model.reset_classifier(5)
    assert model(x).shape == (4, 5)
    head_ids = {id(p) for p in model.head_parameters()}
    assert {id(p) for p in net.parameters()} == {id(p) for p in model.trunk_parameters()}
    assert head_ids.isdisjoint(id(p) for p in model.trunk_parameters())


def test_taps_equal_the_layer_outputs_even_when_modified_in_place(usernets):
    net = usernets.TinyResNet(width=8).eval()
    # bn2's output is then changed in place by `out += x` and ReLU(inplace=True).
    model = share(net, layers=["layer1.bn2", "layer2"], num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stem = net.stem(x)
        block = net.layer1
        expected_bn2 = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(stem)))))
        expected_layer2 = net.layer2(net.layer1(stem))
        bn2, layer2 = model.forward_features(x)
    torch.testing.assert_close(bn2, expected_bn2)
    torch.testing.assert_close(layer2, expected_layer2)
    assert (expected_bn2 < 0).any()  # so a ReLU'd copy would have differed


def test_nothing_after_the_deepest_tap_runs(usernets):
    net = usernets.TinyResNet()
    model = share(net, layers=["layer1", "layer2"])
    calls = []
    net.fc.register_forward_hook(lambda *_: calls.append("fc"))
    model(torch.randn(2, 3, 32, 32))
    assert calls == []


def test_a_vector_output_becomes_a_one_by_one_map(usernets):
    model = share(usernets.TinyResNet(), layers=["fc"], num_classes=2, proj=0)
    (vector,) = model.forward_features(torch.randn(3, 3, 32, 32))
    assert vector.shape == (3, 7, 1, 1)
    assert model.num_features == 7  # proj=0: the classifier reads the pooled taps directly


def test_control_flow_in_forward_follows_the_branch_taken(usernets):
    net = usernets.Branchy().eval()
    model = share(net, layers=["common", "deep"], num_classes=2).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        common, deep = model.forward_features(x)
        torch.testing.assert_close(deep, net.deep(F.relu(net.common(x))))
        torch.testing.assert_close(common, net.common(x))
    # Tapping only the deep layer works on either branch.
    deep_only = share(usernets.Branchy(), layers=["deep"], num_classes=2)
    assert deep_only(x - 1000).shape == (2, 2)
    with pytest.raises(ShareError, match=r"\['common'\] did not run in this forward pass"):
        model(x - 1000)  # the rare branch skips the tapped layer


def test_a_layer_the_dry_run_skips_cannot_be_tapped(usernets):
    with pytest.raises(ShareError, match="layer 'rare' did not run in a dry forward pass of "
                                         "3x16x16 images"):
        share(usernets.Branchy(), layers=["rare"], input_shape=(3, 16, 16))


def test_a_layer_without_a_map_output_cannot_be_tapped():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(2))  # N x 4 x 1024
    with pytest.raises(ShareError, match="layer '1' outputs shape 4x1024 per image"):
        share(net, layers=["1"])


@pytest.mark.parametrize("name,close", [
    ("layer3", "Close matches: layer2, layer1"),
    ("layer1.conv", "Close matches: layer1.conv2, layer1.conv1"),
])
def test_unknown_layer_names_list_close_matches(usernets, name, close):
    with pytest.raises(ShareError, match=f"no layer named '{name}' in TinyResNet. {close}"):
        share(usernets.TinyResNet(), layers=["layer1", name])


@pytest.mark.parametrize("options,message", [
    ({"layers": []}, "no layers given"),
    ({"layers": ["layer1", "layer1"]}, "layers repeat"),
    ({"layers": ["layer1"], "fuse": "sum"}, "fuse must be one of"),
    ({"layers": ["layer1"], "pool": "avg"}, "pool must be one of"),
])
def test_bad_options_are_rejected(usernets, options, message):
    with pytest.raises(ShareError, match=message):
        share(usernets.TinyResNet(), **options)


def test_pooling_and_fusion_choices(usernets):
    x = torch.randn(2, 3, 32, 32)
    gmp = share(usernets.TinyResNet(), layers=["layer1", "layer2"], pool="gmp")
    layer1, layer2 = gmp.forward_features(x)
    expected = torch.cat([layer1.amax((2, 3)), layer2.amax((2, 3))], 1)
    torch.testing.assert_close(gmp.head.pooled([layer1, layer2]), expected)
    last = share(usernets.TinyResNet(), layers=["layer1", "layer2"], fuse="last", proj=0)
    assert last.num_features == 16  # the deepest tap only
    torch.testing.assert_close(last.head.pooled([layer1, layer2]), layer2.mean((2, 3)))


def test_a_deep_copy_runs_on_its_own_weights(usernets):
    model = share(usernets.TinyResNet(), layers=["layer1", "layer2"]).eval()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.backbone.parameters():
            p.add_(1.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        twin_out = twin(x)
        torch.testing.assert_close(model(x), before)
    assert not torch.allclose(twin_out, before)


def test_the_dry_run_leaves_batchnorm_statistics_and_mode_alone(usernets):
    net = usernets.TinyResNet().train()
    share(net, layers=["layer1"])
    assert net.training
    torch.testing.assert_close(net.layer1.bn1.running_mean, torch.zeros(8))
    assert int(net.layer1.bn1.num_batches_tracked) == 0


def test_parameters_used_only_after_the_deepest_tap_are_frozen(usernets):
    net = usernets.TinyResNet()
    model = share(net, layers=["layer1", "layer2.conv1"])
    assert model.frozen == ["layer2.bn1.weight", "layer2.bn1.bias", "layer2.conv2.weight",
                            "layer2.bn2.weight", "layer2.bn2.bias", "layer2.down.weight",
                            "layer2.down.bias", "fc.weight", "fc.bias"]
    assert not net.fc.weight.requires_grad and net.layer2.conv1.weight.requires_grad
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    # What DistributedDataParallel requires: every trainable parameter gets a gradient.
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_layer_no_dry_run_reached_stays_trainable(usernets):
    net = usernets.Branchy()
    model = share(net, layers=["common"])
    assert model.frozen == ["deep.weight", "deep.bias"]
    assert net.rare.weight.requires_grad  # another input may take that branch


def test_stages_are_the_modules_up_to_each_tap(usernets):
    net = usernets.TinyResNet()
    model = share(net, layers=["layer1", "layer2.conv1"])
    first, second = model.stage_modules()
    named = {id(m): name for name, m in net.named_modules()}
    assert [named[id(m)] for m in first] == ["stem.0", "stem.1", "layer1.conv1", "layer1.bn1",
                                            "layer1.relu", "layer1.conv2", "layer1.bn2"]
    assert [named[id(m)] for m in second] == ["layer2.conv1"]
    ids = [id(p) for stage in (first, second) for m in stage for p in m.parameters()]
    frozen = {id(p) for n, p in net.named_parameters() if n in model.frozen}
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.trunk_parameters()} - frozen


def test_tensors_a_module_holds_beside_its_children_join_the_stage_it_starts(usernets):
    net = usernets.TinyResNet()
    net.offset = nn.Parameter(torch.zeros(1))  # the root's own; the root starts first
    model = share(net, layers=["layer1", "layer2"])
    first, _ = model.stage_modules()
    holders = [m for m in first if any(p is net.offset for p in m.parameters(recurse=False))]
    assert len(holders) == 1 and list(holders[0].parameters()) == [net.offset]
