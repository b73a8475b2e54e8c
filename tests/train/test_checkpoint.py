import json

import pytest
import torch

from hfsnet.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hfsnet.train.optim import ParamGroup, build_optimizer
from tests.helpers import CHECKPOINT_META, tiny_hfs


def trained_pair():
    torch.manual_seed(0)
    model = tiny_hfs()
    opt = build_optimizer([ParamGroup("all", list(model.parameters()), 0.01)], "adamw",
                          weight_decay=1e-4)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return model, opt, x


def test_round_trip_restores_weights_and_optimizer(tmp_path):
    model, opt, x = trained_pair()
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, model, CHECKPOINT_META, optimizer=opt)
    ckpt = load_checkpoint(path)
    assert ckpt.meta["classes"] == ["a", "b"] and ckpt.meta["model"] == "hfs"
    rebuilt = ckpt.build_model().eval()
    torch.testing.assert_close(rebuilt(x), model.eval()(x), rtol=0, atol=0)
    fresh = build_optimizer([ParamGroup("all", list(rebuilt.parameters()), 0.01)], "adamw",
                            weight_decay=1e-4)
    fresh.load_state_dict(ckpt.optimizer_state())
    for a, b in zip(opt.state.values(), fresh.state.values(), strict=True):
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=0, atol=0)
        assert float(a["step"]) == float(b["step"])
    assert not list(tmp_path.glob("*.tmp"))


def test_run_directory_resolves_to_its_checkpoint(tmp_path):
    model, _, _ = trained_pair()
    save_checkpoint(tmp_path / "checkpoint.safetensors", model, CHECKPOINT_META)
    assert load_checkpoint(tmp_path).path.name == "checkpoint.safetensors"
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_bit_flip_is_detected(tmp_path):
    model, _, _ = trained_pair()
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, model, CHECKPOINT_META)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize("payload", [b"", b"\x00" * 3, b"not a checkpoint at all"])
def test_garbage_is_refused_with_the_file_name(tmp_path, payload):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(path)


def test_unknown_model_name_in_metadata_is_refused(tmp_path):
    model, _, _ = trained_pair()
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, model, CHECKPOINT_META)
    ckpt = load_checkpoint(path)
    ckpt.meta["model"] = "os.system"
    with pytest.raises(CheckpointError, match="unknown model 'os.system'"):
        ckpt.build_model()
    assert json.loads(json.dumps(ckpt.meta))  # metadata is plain JSON
