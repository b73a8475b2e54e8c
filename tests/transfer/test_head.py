import pytest
import torch

from hfsnet.models import create_model
from hfsnet.models.head import LevelHead
from hfsnet.models.level_head import LEVEL_HEAD_MODEL, install_head, trunk_spec
from hfsnet.train.checkpoint import load_checkpoint, save_checkpoint
from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.head import fold_standardization
from hfsnet.transfer.levels import check_pool, parse_levels

SMALL = {"stages": [1, 1], "growth": 4, "stem": 8}
META = {"classes": ["a", "b", "c"], "in_channels": 3, "image_size": [16, 16],
        "mean": [0.5] * 3, "std": [0.25] * 3, "config": {}}


@pytest.mark.parametrize("text,levels", [("all", [1, 2, 3]), ("last", [3]), ("3,1", [1, 3])])
def test_parse_levels(text, levels):
    assert parse_levels(text, 3) == levels


@pytest.mark.parametrize("text,message", [("0,1", "1..3"), ("4", "1..3"), ("a,b", "--levels")])
def test_bad_levels_name_the_flag(text, message):
    with pytest.raises(CacheError, match=message):
        parse_levels(text, 3)


def test_pool_flag_takes_the_heads_pools():
    assert [check_pool(p) for p in ("gap", "max", "2x2")] == ["gap", "max", "2x2"]
    with pytest.raises(CacheError, match="--pool: expected one of gap, max, 2x2, got 'avg'"):
        check_pool("avg")


def test_gap_over_all_levels_is_the_fusion_head():
    torch.manual_seed(0)
    model = create_model("hfs", num_classes=3, fuse=True, hidden=0, **SMALL).eval()
    head = LevelHead(model.stage_channels(), [1, 2], "gap", 3)
    head.classifier.load_state_dict(model.head.classifier.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(head(model.forward_features(x)), model(x))


def test_folding_standardisation_gives_the_same_scores_on_raw_descriptors():
    torch.manual_seed(0)
    head = LevelHead([4, 6], [1, 2], "gap", 3, hidden=5)
    mean, std = torch.randn(10), torch.rand(10) + 0.5
    x = torch.randn(7, 10) * 3
    before = head.forward_descriptor((x - mean) / std)
    fold_standardization(head, mean, std)
    torch.testing.assert_close(head.forward_descriptor(x), before)


def test_level_head_checkpoint_rebuilds_through_the_registry(tmp_path):
    torch.manual_seed(0)
    model = create_model("seed-cnn", num_classes=10, image_size=16)
    head = LevelHead(model.stage_channels(), [2], "2x2", 3, hidden=8)
    install_head(model, head)
    assert model.model_name == LEVEL_HEAD_MODEL
    assert trunk_spec(model) == ("seed-cnn", {"image_size": 16})
    save_checkpoint(tmp_path / "ck.safetensors", model, META)
    rebuilt = load_checkpoint(tmp_path / "ck.safetensors").build_model().eval()
    assert type(rebuilt) is type(model) and isinstance(rebuilt.head, LevelHead)
    assert rebuilt.head.levels == [2] and rebuilt.head.pool == "2x2" and rebuilt.num_classes == 3
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(rebuilt(x), model.eval()(x), rtol=0, atol=0)
    # A second head replaces the first instead of nesting level-head in level-head.
    install_head(rebuilt, LevelHead(model.stage_channels(), [1, 2], "gap", 4))
    assert rebuilt.model_options["trunk"] == "seed-cnn"
