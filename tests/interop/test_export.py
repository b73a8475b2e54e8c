import contextlib
import io
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hfsnet.cli import main
from hfsnet.data import normalize
from hfsnet.interop.export import ExportError, LegacyExportWarning, Preprocessed, export_model
from hfsnet.interop.user_models import model_from_checkpoint
from hfsnet.models import create_model
from hfsnet.models.share import share
from hfsnet.train.checkpoint import load_checkpoint
from tests.conftest import write_image_folder
from tests.helpers import CHECKPOINT_META, last_json, tiny_hfs_flags

RESNET = "hfsnet_test_usernets:tiny_resnet"
TOLERANCE = 1e-4  # max abs logit difference, fp32
BATCH_SIZES = (1, 7)  # the batch axis is dynamic: neither is the size exported with
# What the legacy exporter says when it runs; the current one must not say it.
LEGACY_WARNING = "TorchScript-based ONNX export"


@pytest.fixture(scope="module")
def hfs_run(tmp_path_factory):
    """A tiny hfs net trained for one epoch, shared by the module's tests (none modifies it)."""
    root = tmp_path_factory.mktemp("export")
    run = root / "hfs-run"
    with pytest.MonkeyPatch.context() as patch:  # isolated_cache is per test; this is not
        patch.setenv("HFSNET_CACHE", str(root / "cache"))
        assert main(["train", *tiny_hfs_flags(), "--data", str(write_image_folder(root / "tiny")),
                     "--out", str(run), "--epochs", "1", "--batch-size", "16", "--quiet"]) == 0
    return run


@dataclass
class Exported:
    path: Path
    stdout: str
    warnings: list[warnings.WarningMessage]
    left_in_cwd: list[str]


@pytest.fixture(scope="module")
def onnx_export(hfs_run, tmp_path_factory):
    """`hfsnet export --json` of the run to ONNX, run once from an empty working directory:
    the file, what the command printed, every warning raised and what it left in the cwd."""
    root = tmp_path_factory.mktemp("onnx")
    cwd = root / "cwd"
    cwd.mkdir()
    out = root / "model.onnx"
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as seen, \
            contextlib.redirect_stdout(stdout):
        patch.chdir(cwd)
        warnings.simplefilter("always")
        code = main(["export", "--checkpoint", str(hfs_run), "--out", str(out), "--json"])
    assert code == 0
    return Exported(out, stdout.getvalue(), seen, sorted(os.listdir(cwd)))


def images(n: int, seed: int, side: int = 16) -> torch.Tensor:
    """uint8 N x 3 x side x side; 16 is the tiny dataset's image size."""
    return torch.randint(0, 256, (n, 3, side, side),
                         generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def reference_logits(run, x: torch.Tensor, model_spec: str | None = None) -> torch.Tensor:
    """What PyTorch computes for uint8 images: the training normalisation, then the model."""
    ckpt = load_checkpoint(run)
    model = model_from_checkpoint(ckpt, model_spec).eval()
    with torch.no_grad():
        return model(normalize(x, ckpt.meta["mean"], ckpt.meta["std"]))


def export(run, out, *extra: str) -> Path:
    code = main(["export", "--checkpoint", str(run), "--out", str(out), "--json", *extra])
    assert code == 0
    return out


def onnx_session(path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_logits(path, x) -> torch.Tensor:
    (logits,) = onnx_session(path).run(["logits"], {"images": x.numpy()})
    return torch.from_numpy(logits)


def meta_for(side: int) -> dict:
    """Checkpoint metadata of a 2-class RGB model at side x side."""
    return {**CHECKPOINT_META, "image_size": [side, side], "model": "test"}


def assert_matches_pytorch(model, path, side: int) -> None:
    """onnxruntime's logits for ``path`` equal PyTorch's for ``model`` at every batch size, and
    are not all ~0 (a comparison of zeros would prove nothing)."""
    wrapper = Preprocessed(model, CHECKPOINT_META["mean"], CHECKPOINT_META["std"]).eval()
    for n in BATCH_SIZES:
        x = images(n, seed=20 + n, side=side)
        with torch.no_grad():
            expected = wrapper(x)
        logits = onnx_logits(path, x)
        assert logits.shape == expected.shape and logits.shape[0] == n
        assert expected.abs().max().item() > 1e-3
        assert (logits - expected).abs().max().item() < TOLERANCE


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


def test_onnx_matches_pytorch_at_two_batch_sizes(hfs_run, onnx_export):
    pytest.importorskip("onnx")
    (graph_input,) = onnx_session(onnx_export.path).get_inputs()
    assert graph_input.name == "images" and graph_input.type == "tensor(uint8)"
    assert isinstance(graph_input.shape[0], str) and graph_input.shape[1:] == [3, 16, 16]
    for n in BATCH_SIZES:
        x = images(n, seed=n)
        logits = onnx_logits(onnx_export.path, x)
        assert logits.shape == (n, 3)
        assert (logits - reference_logits(hfs_run, x)).abs().max().item() < TOLERANCE


def test_onnx_file_is_valid_and_carries_the_printed_metadata(hfs_run, onnx_export):
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(onnx_export.path))
    onnx.checker.check_model(proto)
    stored = json.loads({p.key: p.value for p in proto.metadata_props}["hfsnet"])
    assert json.loads(onnx_export.stdout) == {"out": str(onnx_export.path), "format": "onnx",
                                              **stored}
    meta = load_checkpoint(hfs_run).meta
    assert stored["classes"] == ["circle", "square", "stripe"] and stored["input"] == "uint8"
    assert stored["input_shape"] == [3, 16, 16] and stored["output"] == "logits"
    assert (stored["mean"], stored["std"]) == (meta["mean"], meta["std"])


def test_onnx_goes_through_the_current_exporter_quietly(onnx_export):
    pytest.importorskip("onnx")
    legacy = [str(w.message) for w in onnx_export.warnings
              if w.category is LegacyExportWarning
              or (issubclass(w.category, DeprecationWarning | FutureWarning)
                  and LEGACY_WARNING in str(w.message))]
    assert legacy == []
    assert len(onnx_export.stdout.splitlines()) == 1  # --json: the JSON line, no progress
    assert onnx_export.left_in_cwd == []  # no report or other artifact


def test_float_input_takes_zero_to_one(hfs_run, tmp_path):
    pytest.importorskip("onnx")
    path = export(hfs_run, tmp_path / "model.onnx", "--input", "float")
    assert onnx_session(path).get_inputs()[0].type == "tensor(float)"
    for n in BATCH_SIZES:
        x = images(n, seed=7 + n)
        logits = onnx_logits(path, x.float() / 255)
        assert (logits - reference_logits(hfs_run, x)).abs().max().item() < TOLERANCE


def test_a_shared_user_network_exports_with_its_factory(shared_run, tmp_path, capsys):
    pytest.importorskip("onnx")
    run, _ = shared_run
    out = tmp_path / "user.onnx"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 2
    assert f"pass --model {RESNET}" in capsys.readouterr().err
    assert not out.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LegacyExportWarning)  # its early stop does not block it
        export(run, out, "--model", RESNET)
    for n in BATCH_SIZES:
        x = images(n, seed=10 + n)
        expected = reference_logits(run, x, RESNET)
        assert (onnx_logits(out, x) - expected).abs().max().item() < TOLERANCE


def hfs_air() -> tuple[torch.nn.Module, int]:
    """hfs-air at 32 px, its whitening stem fitted (unfitted, its filters are 0 and so are
    the logits)."""
    model = create_model("hfs-air", num_classes=2)
    model.stem.fit(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    return model, 32


def level_head_on_efficientnet() -> tuple[torch.nn.Module, int]:
    """An adapted model at 16 px: a level head on a random EfficientNet-Lite0 trunk that
    resizes its input to 32 px (antialiased: the legacy exporter had no such op)."""
    model = create_model("level-head", num_classes=2, trunk="efficientnet-lite0",
                         trunk_options={"pretrained": False, "image_size": 32}, levels=[1, 2])
    return model, 16


@pytest.mark.parametrize("build", [hfs_air, level_head_on_efficientnet])
def test_registered_families_export_through_torch_export(build, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    if build is level_head_on_efficientnet:
        pytest.importorskip("efficientnet_lite_pytorch")
    model, side = build()
    model.eval()
    out = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error", LegacyExportWarning)
        warnings.filterwarnings("error", f".*{LEGACY_WARNING}", DeprecationWarning)
        export_model(model, meta_for(side), out)
    assert_matches_pytorch(model, out, side)


def test_a_user_network_torch_export_cannot_capture_falls_back_explicitly(usernets, tmp_path):
    pytest.importorskip("onnx")
    # Branchy's forward branches on a tensor value: torch.export cannot capture that.
    model = share(usernets.Branchy(), layers=["common", "deep"], num_classes=2,
                  input_shape=(3, 16, 16)).eval()
    out = tmp_path / "branchy.onnx"
    with pytest.warns(LegacyExportWarning, match="torch.export cannot capture Branchy .*"
                                                 "GuardOnDataDependentSymNode"):
        export_model(model, meta_for(16), out)
    assert_matches_pytorch(model, out, 16)  # uint8 images all take the branch traced


def test_other_networks_torch_export_cannot_capture_raise(usernets, tmp_path):
    out = tmp_path / "branchy.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error", LegacyExportWarning)  # no fallback: the error shows
        with pytest.raises(RuntimeError, match="data-dependent"):
            export_model(usernets.Branchy().eval(), meta_for(16), out)
    assert not out.exists()


@pytest.mark.parametrize("package", ["onnx", "onnxscript"])
def test_onnx_without_a_package_says_how_to_get_it(hfs_run, tmp_path, capsys, monkeypatch,
                                                   package):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(hfs_run), "--out", str(out)]) == 2
    assert f"needs the {package} package; install it with `pip install 'hfsnet[onnx]'`" in \
        capsys.readouterr().err
    assert not out.exists()


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
