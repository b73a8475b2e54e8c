"""Crafted checkpoints: hostile metadata, tensors and resume state are refused with one
CheckpointError naming the file and the field, never a traceback or an out-of-memory crash."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from hfsnet.fsutil import tensor_digest
from hfsnet.train.checkpoint import (
    CheckpointError,
    check_resume_state,
    load_checkpoint,
    save_checkpoint,
)
from hfsnet.train.checkpoint_schema import MAX_JSON_DEPTH, json_depth
from hfsnet.train.config import TrainConfig
from hfsnet.train.loop import EpochTally
from hfsnet.train.optim import ParamGroup, build_optimizer
from hfsnet.train.runtime import rng_state
from tests.helpers import CHECKPOINT_META, tiny_hfs

NAME = "crafted.safetensors"


def write_raw(path: Path, tensors: dict[str, torch.Tensor], meta_text: str) -> Path:
    path.write_bytes(st_save(tensors, metadata={"hfsnet": meta_text}))
    return path


def craft(tmp_path: Path, *, meta=None, tensors=None, signed: bool = True) -> Path:
    """A checkpoint of the tiny net whose metadata and tensors the functions ``meta`` and
    ``tensors`` rewrite; ``signed`` recomputes the checksum so that only the schema can
    refuse it."""
    source = tmp_path / "source.safetensors"
    if not source.exists():
        save_checkpoint(source, tiny_hfs(), CHECKPOINT_META)
    ckpt = load_checkpoint(source)
    new_tensors = tensors(dict(ckpt.tensors)) if tensors else dict(ckpt.tensors)
    new_meta = dict(ckpt.meta)
    if signed:
        new_meta["sha256"] = tensor_digest(new_tensors)
    new_meta = meta(new_meta) if meta else new_meta
    return write_raw(tmp_path / NAME, new_tensors, json.dumps(new_meta))


def refused(path: Path, match: str, *, build: bool = False) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        ckpt = load_checkpoint(path)
        if build:
            ckpt.build_model()
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def with_field(name, value):
    return lambda meta: {**meta, name: value}


def without(name):
    return lambda meta: {k: v for k, v in meta.items() if k != name}


# --- the metadata's form ---------------------------------------------------------------------


def test_metadata_that_is_a_list_is_refused(tmp_path):
    path = write_raw(tmp_path / NAME, {"x": torch.zeros(1)}, "[1, 2, 3]")
    refused(path, "metadata: expected a JSON object, got list")


def test_deeply_nested_metadata_is_refused_before_parsing(tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    path = write_raw(tmp_path / NAME, {"x": torch.zeros(1)}, deep)
    refused(path, f"nested 200000 deep, expected at most {MAX_JSON_DEPTH}")
    nested_field = json.dumps({"format_version": 1, "history": deep})[:-1]  # a string: fine
    assert json_depth(nested_field.encode()) == 1


def test_metadata_with_a_lone_surrogate_is_refused(tmp_path):
    header = json.dumps({"__metadata__": {"hfsnet": "\ud800"}}).encode()
    path = tmp_path / NAME
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    refused(path, "metadata: not valid JSON")


def test_deeply_nested_header_is_refused(tmp_path):
    header = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = tmp_path / NAME
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    refused(path, "header: JSON nested 100001 deep")


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth(b'{"a": "[[[[\\"[[", "b": [[1], {"c": "}}}"}]}') == 3
    assert json_depth(b"[]" * 1000) == 1


@pytest.mark.parametrize("field", ["classes", "in_channels", "image_size", "model_options",
                                   "model", "num_classes", "sha256"])
def test_missing_fields_are_named(tmp_path, field):
    refused(craft(tmp_path, meta=without(field)), f"field '{field}' missing")


@pytest.mark.parametrize("field,value,expected", [
    ("model_options", [1, 2], "model_options.*JSON object"),
    ("model_options", "growth=8", "model_options.*JSON object"),
    ("classes", "ab", "classes.*list of 1 to 100,000 names"),
    ("classes", [1, 2], "classes.*list of"),
    ("classes", [], "classes.*list of"),
    ("classes", ["a", "x" * 1001], "classes.*at most 1000 characters"),
    ("in_channels", 0, r"in_channels.*integer in \[1, 64\]"),
    ("in_channels", 65, r"in_channels.*integer in \[1, 64\]"),
    ("in_channels", "3", "in_channels"),
    ("in_channels", True, "in_channels"),
    ("image_size", [100_000, 100_000], "image_size.*each 1 to 4096"),
    ("image_size", [16], "image_size"),
    ("image_size", [16.0, 16.0], "image_size"),
    ("mean", [0.5, 0.5], "mean.*list of 3 finite numbers"),
    ("mean", [0.5, float("nan"), 0.5], "mean.*finite"),
    ("std", [0.25, 0.0, 0.25], "std.*> 0"),
    ("std", {"r": 1}, "std"),
    ("config", [1], "config.*JSON object"),
    ("config", {"image_size": 100_000}, "config.*image-size"),
    ("config", {"no_such_option": 1}, "config.*unknown config key 'no_such_option'"),
    ("config", {"lr": "fast"}, "config.*'lr'"),
    ("epoch", -1, "epoch.*>= 0"),
    ("tally", [0], "tally.*JSON object"),
    ("history", {"epoch": 1}, "history.*list of JSON objects"),
    ("run_id", 7, "run_id.*string"),
    ("optimizer", [], "optimizer.*state and param_groups"),
    ("sha256", "abc", "sha256.*64 hex digits"),
    ("num_classes", 10**9, "num_classes"),
])
def test_mistyped_or_absurd_fields_are_named(tmp_path, field, value, expected):
    message = refused(craft(tmp_path, meta=with_field(field, value)), expected)
    assert f"metadata field '{field}'" in message


def test_class_count_must_match_the_head(tmp_path):
    refused(craft(tmp_path, meta=with_field("classes", ["a", "b", "c"])),
            "3 class names for a head with 2 outputs")


@pytest.mark.parametrize("options,match", [
    ({"growth": 10**9}, "parameters|too large"),  # width 1e9
    ({"stages": [100_000]}, "stages"),  # depth 1e5
    ({"growth": 1e9}, "growth"),
    ({"stages": "deep"}, "stages"),
    ({"no_such": 1}, "unknown option 'no_such'"),
])
def test_absurd_model_options_are_refused_before_building(tmp_path, options, match):
    path = craft(tmp_path, meta=with_field("model_options", {"stages": [1, 1], "growth": 8,
                                                             "stem": 8, **options}))
    start = time.perf_counter()
    refused(path, match, build=True)
    assert time.perf_counter() - start < 30


def test_absurd_image_size_option_is_refused(tmp_path):
    path = craft(tmp_path, meta=lambda m: {**m, "model": "seed-cnn",
                                           "model_options": {"image_size": 100_000}})
    refused(path, "parameters|too large", build=True)


def test_names_with_escapes_are_printed_escaped(tmp_path):
    message = refused(craft(tmp_path, meta=with_field("config", {"\x1b[2Jevil\n": 1})),
                      "unknown config key '\\\\x1b\\[2Jevil\\\\n'")
    assert "\x1b" not in message


# --- the file's size and layout --------------------------------------------------------------


def test_sparse_20gb_file_is_refused_by_its_size_not_read(tmp_path):
    path = tmp_path / NAME
    save_checkpoint(path, tiny_hfs(), CHECKPOINT_META)
    os.truncate(path, 20 * 2**30)  # sparse: no disk, but reading it would take 20 GB
    start = time.perf_counter()
    refused(path, "the header describes .* bytes of tensor data, the file holds 21,474,")
    assert time.perf_counter() - start < 5


def test_header_claiming_huge_tensors_is_refused(tmp_path):
    header = json.dumps({"x": {"dtype": "F32", "shape": [5 * 2**30],
                               "data_offsets": [0, 20 * 2**30]}}).encode()
    path = tmp_path / NAME
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 64)
    refused(path, "describes 21,474,836,480 bytes of tensor data, the file holds 64")


@pytest.mark.parametrize("entry,match", [
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}, "F32 \\[4\\] takes 16 bytes"),
    ({"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 1]}, "unknown dtype 'PICKLE'"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "shape"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, "data_offsets"),
    ({"dtype": "F32", "shape": [1]}, "dtype, shape and data_offsets"),
])
def test_malformed_tensor_entries_are_named(tmp_path, entry, match):
    header = json.dumps({"w\x1b": entry}).encode()
    path = tmp_path / NAME
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    message = refused(path, f"tensor 'w\\\\x1b': .*{match}")
    assert "\x1b" not in message


def test_header_length_over_the_bound_is_refused_unread(tmp_path):
    path = tmp_path / NAME
    path.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    refused(path, "header of 1,099,511,627,776 bytes: expected at most 104,857,600")


def test_file_without_hfsnet_metadata_is_refused(tmp_path):
    path = tmp_path / NAME
    path.write_bytes(st_save({"x": torch.zeros(2)}))
    refused(path, "no 'hfsnet' metadata")


# --- tensors against the model ---------------------------------------------------------------


def retyped(name, change):
    return lambda tensors: {**tensors, name: change(tensors[name])}


WEIGHT = "model.head.classifier.weight"


@pytest.mark.parametrize("tensors,match", [
    (retyped(WEIGHT, lambda t: t.double() * 1e9),
     f"tensor '{WEIGHT}': expected float32 \\[2, .*\\], found float64"),
    (retyped(WEIGHT, lambda t: t.half()), "found float16"),
    (retyped(WEIGHT, lambda t: t[:1]), "expected float32 \\[2, .*\\], found float32 \\[1,"),
    (retyped(WEIGHT, lambda t: t.long()), "found int64"),
    (lambda t: {k: v for k, v in t.items() if k != WEIGHT}, f"tensor '{WEIGHT}' missing"),
    (lambda t: {**t, "model.extra\x1b": torch.zeros(1)},
     "unexpected tensor 'model.extra\\\\x1b'"),
])
def test_tensors_must_match_the_rebuilt_model_exactly(tmp_path, tensors, match):
    refused(craft(tmp_path, tensors=tensors), match, build=True)


def test_unsigned_changes_are_still_a_checksum_mismatch(tmp_path):
    refused(craft(tmp_path, tensors=retyped(WEIGHT, lambda t: t + 1), signed=False),
            "checksum mismatch")


def test_an_honest_checkpoint_still_loads(tmp_path):
    model = craft(tmp_path).parent / "source.safetensors"
    rebuilt = load_checkpoint(model).build_model()
    assert rebuilt.num_classes == 2


# --- resume state ----------------------------------------------------------------------------


def resumable(tmp_path: Path, **meta_over):
    """A checkpoint the way Trainer.save writes one, with the model and optimizer it came
    from."""
    torch.manual_seed(0)
    model = tiny_hfs()
    opt = build_optimizer([ParamGroup("all", list(model.parameters()), 0.01)], "adamw",
                          weight_decay=1e-4)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)),
                                      torch.tensor([0, 1, 0, 1])).backward()
    opt.step()
    rng_plain, rng_tensors = rng_state()
    meta = {**CHECKPOINT_META, "config": TrainConfig().to_dict(), "data_digest": "0" * 64,
            "epoch": 0, "global_step": 1,
            "tally": asdict(EpochTally(step=1, seen=4)), "history": [], "rng": rng_plain,
            **meta_over}
    path = tmp_path / "resume.safetensors"
    save_checkpoint(path, model, meta, optimizer=opt, extra_tensors=rng_tensors)
    return path, model, opt


def check(path, model, opt, averages=None):
    check_resume_state(load_checkpoint(path), opt, model=model, tally=EpochTally(),
                       averages=averages or {"ema": None, "lookahead": None})


def rewritten(path: Path, *, meta=None, tensors=None) -> Path:
    ckpt = load_checkpoint(path)
    new_tensors = tensors(dict(ckpt.tensors)) if tensors else dict(ckpt.tensors)
    new_meta = meta(json.loads(json.dumps(ckpt.meta))) if meta else dict(ckpt.meta)
    new_meta["sha256"] = tensor_digest(new_tensors)
    return write_raw(path, new_tensors, json.dumps(new_meta))


def test_a_genuine_resume_state_passes_and_loads(tmp_path):
    path, model, opt = resumable(tmp_path)
    check(path, model, opt)
    opt.load_state_dict(load_checkpoint(path).optimizer_state())


@pytest.mark.parametrize("field", ["config", "tally", "rng", "optimizer", "epoch",
                                   "data_digest"])
def test_resume_fields_are_required(tmp_path, field):
    path, model, opt = resumable(tmp_path)
    rewritten(path, meta=without(field))
    with pytest.raises(CheckpointError, match=f"resume.safetensors: metadata field '{field}' "
                       "missing \\(a resumable checkpoint"):
        check(path, model, opt)


def test_unknown_tally_field_is_named(tmp_path):
    path, model, opt = resumable(tmp_path, tally={"step": 1, "bogus": 3})
    with pytest.raises(CheckpointError, match="resume.safetensors: .*tally.*unknown field "
                       "'bogus'"):
        check(path, model, opt)


def test_a_different_number_of_param_groups_is_named(tmp_path):
    path, model, _ = resumable(tmp_path)
    params = list(model.parameters())
    two = build_optimizer([ParamGroup("a", params[:2], 0.01), ParamGroup("b", params[2:], 0.01)],
                          "adamw", weight_decay=1e-4)
    saved = len(load_checkpoint(path).meta["optimizer"]["param_groups"])
    assert len(two.param_groups) != saved
    with pytest.raises(CheckpointError, match=f"{saved} parameter groups saved, the optimizer "
                       f"has {len(two.param_groups)}"):
        check(path, model, two)


def test_a_group_of_another_size_is_named(tmp_path):
    path, model, _ = resumable(tmp_path)
    fewer = build_optimizer([ParamGroup("a", list(model.parameters())[1:], 0.01)], "adamw",
                            weight_decay=1e-4)
    with pytest.raises(CheckpointError, match="parameter group 0 holds \\d+ parameters, the "
                       "optimizer's holds"):
        check(path, model, fewer)


def test_an_unknown_group_field_is_named(tmp_path):
    path, model, opt = resumable(tmp_path)

    def add_field(meta):
        meta["optimizer"]["param_groups"][0]["evil\n"] = 1
        return meta

    rewritten(path, meta=add_field)
    with pytest.raises(CheckpointError, match="unknown field 'evil\\\\n'"):
        check(path, model, opt)


def test_optimizer_state_of_the_wrong_shape_is_named(tmp_path):
    path, model, opt = resumable(tmp_path)
    rewritten(path, tensors=retyped("optim.0.exp_avg", lambda t: t.reshape(-1)[:3]))
    with pytest.raises(CheckpointError, match="tensor 'optim.0.exp_avg': expected shape "
                       "\\[.*\\] \\(its parameter's\\) or a scalar, found float32 \\[3\\]"):
        check(path, model, opt)


@pytest.mark.parametrize("name", ["optim.x.exp_avg", "optim.999.exp_avg", "optim.0"])
def test_optimizer_tensor_names_must_name_a_parameter(tmp_path, name):
    path, _, _ = resumable(tmp_path)
    rewritten(path, tensors=lambda t: {**t, name: torch.zeros(1)})
    with pytest.raises(CheckpointError, match=f"tensor '{name}': expected optim.<id>.<slot>"):
        load_checkpoint(path)


def test_optimizer_state_for_an_unlisted_parameter_is_named(tmp_path):
    path, _, _ = resumable(tmp_path)

    def add_state(meta):
        meta["optimizer"]["state"]["12345"] = {}
        return meta

    rewritten(path, meta=add_state)
    with pytest.raises(CheckpointError, match="state for parameter '12345'"):
        load_checkpoint(path)


@pytest.mark.parametrize("rng,match", [
    ({"python": [3, [1, 2], None]}, "rng.python"),
    ({"numpy": ["PCG64", [0] * 624, 0, 0, 0.0]}, "rng.numpy"),
])
def test_malformed_rng_state_is_named(tmp_path, rng, match):
    path, model, opt = resumable(tmp_path)
    rewritten(path, meta=lambda meta: {**meta, "rng": {**meta["rng"], **rng}})
    with pytest.raises(CheckpointError, match=f"field '{match}'"):
        check(path, model, opt)


def test_torch_rng_state_of_the_wrong_size_is_named(tmp_path):
    path, model, opt = resumable(tmp_path)
    rewritten(path, tensors=retyped("extra.rng.torch", lambda t: t[:10]))
    with pytest.raises(CheckpointError, match="tensor 'extra.rng.torch': expected uint8"):
        check(path, model, opt)


class Shadow:
    def __init__(self, model):
        self.tensors = {k: v.clone() for k, v in model.state_dict().items()
                        if v.is_floating_point()}

    def state_tensors(self):
        return self.tensors


def test_a_weight_average_the_file_lacks_is_named(tmp_path):
    path, model, opt = resumable(tmp_path)
    with pytest.raises(CheckpointError, match="tensor 'extra.ema.stem.*' missing"):
        check(path, model, opt, averages={"ema": Shadow(model)})


def test_resume_weights_of_the_wrong_dtype_are_named(tmp_path):
    path, model, opt = resumable(tmp_path)
    rewritten(path, tensors=retyped(WEIGHT, lambda t: t.double()))
    with pytest.raises(CheckpointError, match=f"'{WEIGHT}': expected float32"):
        check(path, model, opt)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "muon"])
def test_checkpoints_the_trainer_writes_pass(tiny_folder, tmp_path, optimizer):
    """The checks accept every optimizer's real state, a weight average and lookahead."""
    from hfsnet.train import resolve_config, train
    from hfsnet.train.run import resume_trainer
    from tests.helpers import tiny_hfs_options

    run = tmp_path / "run"
    config = resolve_config(model="hfs", data=str(tiny_folder), epochs=1, batch_size=32,
                            model_options=tiny_hfs_options(), optimizer=optimizer,
                            precision="fp32", ema_decay=0.9, lookahead_every=2)
    train(config, run, progress=False)
    trainer = resume_trainer(run, progress=False)
    check_resume_state(load_checkpoint(run), trainer.optimizer, model=trainer.model,
                       tally=trainer.tally,
                       averages={"ema": trainer.average, "lookahead": trainer.lookahead})
    shadow = Shadow(trainer.model)
    shadow.tensors["stem.weight"] = shadow.tensors["stem.weight"].double()
    with pytest.raises(CheckpointError, match="tensor 'extra.ema.stem.weight': expected "
                       "float64 .*, found float32"):
        check_resume_state(load_checkpoint(run), trainer.optimizer, model=trainer.model,
                           tally=trainer.tally, averages={"ema": shadow})
