"""Every model declares its stages: the trunk's modules per stage, shallowest first."""

import pytest
import torch

from hfsnet.models import create_model, list_models

OPTIONS = {"level-head": {"trunk": "hfs-air-s", "levels": [2]}}


def _param_ids(modules):
    return [id(p) for m in modules for p in m.parameters()]


@pytest.mark.parametrize("name", [e.name for e in list_models()])
def test_stages_cover_every_trunk_parameter_once_and_no_head_parameter(name):
    with torch.device("meta"):  # the grouping is structural: no weights needed
        model = create_model(name, **OPTIONS.get(name, {}))
    stages = model.stage_modules()
    assert len(stages) == len(model.stage_channels())
    ids = [pid for stage in stages for pid in _param_ids(stage)]
    assert len(ids) == len(set(ids))  # once
    assert set(ids) == {id(p) for p in model.trunk_parameters()}
    assert set(ids).isdisjoint(id(p) for p in model.head_parameters())


def test_the_stem_counts_with_the_first_stage():
    model = create_model("hfs", stages=[1, 1], growth=4, stem=8)
    stages = model.stage_modules()
    assert stages == [[model.stem, model.blocks[0]], [model.blocks[1]]]
    seed = create_model("seed-cnn")
    assert seed.stage_modules() == [[seed.stages[0]], [seed.stages[1]]]
    assert seed.blocks is seed.stages
    # seed-cnn's weights keep the names its saved checkpoints hold
    assert "stages.0.0.weight" in seed.state_dict()
