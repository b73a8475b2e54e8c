import json
import sys

import pytest
import torch

from hfsnet.cli import main
from hfsnet.data import normalize
from hfsnet.interop.export import ExportError, export_model
from hfsnet.interop.user_models import model_from_checkpoint
from hfsnet.train.checkpoint import load_checkpoint
from tests.helpers import last_json, tiny_hfs_flags

RESNET = "hfsnet_test_usernets:tiny_resnet"
TOLERANCE = 1e-4  # max abs logit difference, fp32
BATCH_SIZES = (1, 5)  # the batch axis is dynamic: neither is the size exported with


@pytest.fixture
def hfs_run(tiny_folder, tmp_path):
    run = tmp_path / "hfs-run"
    assert main(["train", *tiny_hfs_flags(), "--data", str(tiny_folder), "--out", str(run),
                 "--epochs", "1", "--batch-size", "16", "--quiet"]) == 0
    return run


def images(n: int, seed: int) -> torch.Tensor:
    """uint8 N x 3 x 16 x 16, the tiny dataset's image size."""
    return torch.randint(0, 256, (n, 3, 16, 16), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def reference_logits(run, x: torch.Tensor, model_spec: str | None = None) -> torch.Tensor:
    """What PyTorch computes for uint8 images: the training normalisation, then the model."""
    ckpt = load_checkpoint(run)
    model = model_from_checkpoint(ckpt, model_spec).eval()
    with torch.no_grad():
        return model(normalize(x, ckpt.meta["mean"], ckpt.meta["std"]))


def export(run, out, *extra: str) -> dict:
    code = main(["export", "--checkpoint", str(run), "--out", str(out), "--json", *extra])
    assert code == 0
    return out


def onnx_logits(path, x) -> torch.Tensor:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": x.numpy()})
    return torch.from_numpy(logits)


def test_torchscript_includes_normalisation_at_any_batch_size(hfs_run, tmp_path, capsys):
    path = export(hfs_run, tmp_path / "model.pt", "--format", "torchscript")
    info = last_json(capsys)
    assert info["input"] == "uint8" and info["input_shape"] == [3, 16, 16]
    assert info["classes"] == ["circle", "square", "stripe"]
    extra = {"hfsnet.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["hfsnet.json"])["classes"] == info["classes"]
    for n in BATCH_SIZES:
        x = images(n, seed=n)
        diff = (scripted(x) - reference_logits(hfs_run, x)).abs().max().item()
        assert diff < TOLERANCE


def test_onnx_matches_pytorch_at_two_batch_sizes(hfs_run, tmp_path):
    onnx = pytest.importorskip("onnx")
    path = export(hfs_run, tmp_path / "model.onnx")
    for n in BATCH_SIZES:
        x = images(n, seed=n)
        logits = onnx_logits(path, x)
        assert logits.shape == (n, 3)
        assert (logits - reference_logits(hfs_run, x)).abs().max().item() < TOLERANCE
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["hfsnet"])["classes"] == ["circle", "square", "stripe"]


def test_float_input_takes_zero_to_one(hfs_run, tmp_path):
    pytest.importorskip("onnx")
    path = export(hfs_run, tmp_path / "model.onnx", "--input", "float")
    x = images(BATCH_SIZES[1], seed=7)
    logits = onnx_logits(path, x.float() / 255)
    assert (logits - reference_logits(hfs_run, x)).abs().max().item() < TOLERANCE


def test_a_shared_user_network_exports_with_its_factory(shared_run, tmp_path, capsys):
    pytest.importorskip("onnx")
    run, _ = shared_run
    out = tmp_path / "user.onnx"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 2
    assert f"pass --model {RESNET}" in capsys.readouterr().err
    assert not out.exists()
    export(run, out, "--model", RESNET)
    for n in BATCH_SIZES:
        x = images(n, seed=10 + n)
        expected = reference_logits(run, x, RESNET)
        assert (onnx_logits(out, x) - expected).abs().max().item() < TOLERANCE


def test_onnx_without_the_package_says_how_to_get_it(hfs_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    assert main(["export", "--checkpoint", str(hfs_run), "--out",
                 str(tmp_path / "m.onnx")]) == 2
    assert "needs the onnx package; install it with `pip install 'hfsnet[onnx]'`" in \
        capsys.readouterr().err


def test_export_targets_inside_a_run_are_refused_but_not_elsewhere(hfs_run, tmp_path):
    ckpt = load_checkpoint(hfs_run)
    model = model_from_checkpoint(ckpt, None)
    for name in ("checkpoint.safetensors", "config.json", "checkpoints/step-1.safetensors",
                 "tensorboard/events.out"):
        with pytest.raises(ExportError, match=f"belongs to the run in {hfs_run}"):
            export_model(model, ckpt.meta, hfs_run / name, fmt="torchscript")
    # A config.json in a folder that holds no run is an ordinary file to write.
    plain = tmp_path / "plain" / "config.json"
    export_model(model, ckpt.meta, plain, fmt="torchscript", source=ckpt.path)
    assert torch.jit.load(str(plain)) is not None
    # A checkpoint outside any run directory is still protected from its own export.
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(ckpt.path.read_bytes())
    with pytest.raises(ExportError, match="the checkpoint being exported"):
        export_model(model, ckpt.meta, lone, fmt="torchscript", source=lone)
    assert lone.read_bytes() == ckpt.path.read_bytes()
