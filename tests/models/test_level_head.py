"""level-head: a registered trunk with a LevelHead, rebuilt through the registry."""

import pytest
import torch

from hfsnet.models import ModelOptionError, create_model
from hfsnet.models.head import LevelHead
from hfsnet.models.level_head import LEVEL_HEAD_MODEL, install_head, trunk_spec


def test_an_installed_head_rebuilds_from_the_recorded_options():
    torch.manual_seed(0)
    model = create_model("hfs-seed", num_classes=10, stages=[2, 2])
    install_head(model, LevelHead(model.stage_channels(), [2], "2x2", 3, hidden=8))
    assert model.model_name == LEVEL_HEAD_MODEL
    assert model.model_options == {"trunk": "hfs-seed", "trunk_options": {"stages": [2, 2]},
                                   "levels": [2], "pool": "2x2", "hidden": 8}
    assert trunk_spec(model) == ("hfs-seed", {"stages": [2, 2]})
    rebuilt = create_model(LEVEL_HEAD_MODEL, num_classes=3, **model.model_options)
    assert type(rebuilt) is type(model) and isinstance(rebuilt.head, LevelHead)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_a_level_head_keeps_its_trunks_stages():
    model = create_model(LEVEL_HEAD_MODEL, trunk="hfs-air", trunk_options={"widths": [4, 8]},
                         levels=[1])
    assert [len(stage) for stage in model.stage_modules()] == [2, 1]  # stem + block, block
    assert model.num_features == 4 and model.head.pool == "gap"


def test_levels_default_to_every_stage():
    model = create_model(LEVEL_HEAD_MODEL, trunk="hfs-seed")
    assert model.head.levels == [1, 2] and model.num_features == 96


def test_a_level_head_cannot_wrap_a_level_head():
    with pytest.raises(ModelOptionError, match="option 'trunk': expected a plain model"):
        create_model(LEVEL_HEAD_MODEL, trunk=LEVEL_HEAD_MODEL)
