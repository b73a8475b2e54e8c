import pytest

from hfsnet.analysis.summary import SummaryError, parse_input_shape, summarize
from hfsnet.cli import main
from hfsnet.models import create_model
from tests.helpers import last_json

# seed-cnn at 3x32x32, by hand. Params: out x in x k x k + out biases; Dense: in x out + out.
# MACs per image: conv Hout x Wout x Cout x Cin x k x k (valid 3x3 convs shrink by 2 px,
# 2x2 pools halve); Dense in x out.
SEED_CNN_LAYERS = {
    "stages.0.0": (32 * 3 * 9 + 32, 30 * 30 * 32 * 3 * 9),
    "stages.0.2": (32 * 32 * 9 + 32, 28 * 28 * 32 * 32 * 9),
    "stages.1.0": (64 * 32 * 9 + 64, 12 * 12 * 64 * 32 * 9),
    "stages.1.2": (64 * 64 * 9 + 64, 10 * 10 * 64 * 64 * 9),
    "head.hidden.1": (1600 * 512 + 512, 1600 * 512),
    "head.classifier": (512 * 10 + 10, 512 * 10),
}


def seed_cnn_rows(batch_size=2, precision="fp32"):
    summary = summarize(create_model("seed-cnn"), (3, 32, 32), batch_size=batch_size,
                        precision=precision)
    return summary, {r.name: r for r in summary.rows}


def test_seed_cnn_params_and_macs_match_hand_counts():
    summary, rows = seed_cnn_rows()
    assert {n: (rows[n].params, rows[n].macs) for n in SEED_CNN_LAYERS} == SEED_CNN_LAYERS
    assert (rows["stages.0.0"].params, rows["stages.0.0"].macs) == (896, 777_600)
    assert [rows[n].params for n in SEED_CNN_LAYERS] == [896, 9248, 18496, 36928, 819712, 5130]
    assert rows["stages.0.0"].flops == 2 * 777_600
    assert rows["stages.0.0"].output_shape == "2x32x30x30"
    assert rows["stages.0.4"].output_shape == "2x32x14x14"
    # A container that never runs itself sums its children.
    assert rows["stages"].macs == 777_600 + 7_225_344 + 2_654_208 + 3_686_400
    totals = summary.totals
    assert totals.params == totals.trainable_params == 890_410
    assert totals.macs == 15_167_872
    assert totals.flops == 2 * 15_167_872
    assert totals.param_bytes == 4 * 890_410


def test_activation_bytes_follow_batch_and_precision():
    _, rows = seed_cnn_rows(batch_size=2)
    # conv1 keeps the input batch; ReLU keeps its output (2 x 32 x 30 x 30 floats); conv2's
    # input is that same tensor, already charged, so conv2 adds nothing.
    assert rows["stages.0.0"].activation_bytes == 2 * 3 * 32 * 32 * 4
    assert rows["stages.0.1"].activation_bytes == 2 * 32 * 30 * 30 * 4
    assert rows["stages.0.2"].activation_bytes == 0
    # MaxPool keeps int64 indices of its 2 x 32 x 14 x 14 output.
    assert rows["stages.0.4"].activation_bytes == 2 * 32 * 14 * 14 * 8
    _, rows8 = seed_cnn_rows(batch_size=8)
    assert rows8["stages.0.1"].activation_bytes == 4 * rows["stages.0.1"].activation_bytes
    bf16, rows_bf16 = seed_cnn_rows(batch_size=2, precision="bf16")
    assert rows_bf16["stages.0.1"].activation_bytes == 2 * 32 * 30 * 30 * 2
    # bf16 weight copies are reported apart from activations: all weights, at 2 bytes.
    biases = 32 + 32 + 64 + 64 + 512 + 10  # not needed for backward, so not kept
    assert bf16.totals.weight_copy_bytes == 2 * (890_410 - biases)


def test_frozen_params_and_norm_buffers_are_counted_apart():
    model = create_model("hfs-seed", norm=True)
    for p in model.head.classifier.parameters():
        p.requires_grad_(False)
    totals = summarize(model, (3, 32, 32)).totals
    assert totals.frozen_params == 512 * 10 + 10
    # BatchNorm after each of the 4 convs (32, 32, 64, 64 channels): mean, var, and a counter.
    assert totals.buffer_elements == 2 * (32 + 32 + 64 + 64) + 4
    assert totals.trainable_params + totals.frozen_params == sum(
        p.numel() for p in model.parameters())


@pytest.mark.parametrize("text", ["3x32", "3x32x0", "axbxc", "3x32x32x1"])
def test_bad_input_shape_names_the_flag(text):
    with pytest.raises(SummaryError, match="--input"):
        parse_input_shape(text)


def test_summary_command_prints_table_and_json(capsys):
    assert main(["summary", "seed-cnn", "--no-memory", "--batch-size", "2"]) == 0
    text = capsys.readouterr().out
    assert "stages.0.0" in text and "777,600" in text and "890,410" in text
    assert main(["summary", "seed-cnn", "--no-memory", "--depth", "1", "--json"]) == 0
    payload = last_json(capsys)
    assert payload["totals"]["macs"] == 15_167_872
    assert payload["peak_memory"] is None
    assert main(["summary", "seed-cnn", "--no-memory", "--depth", "1"]) == 0
    shallow = capsys.readouterr().out
    assert "stages.0.0" not in shallow and "head.classifier" not in shallow
    assert "head " in shallow


def test_summary_command_rejects_bad_input(capsys):
    assert main(["summary", "seed-cnn", "--input", "3x32"]) == 2
    assert "--input" in capsys.readouterr().err
    assert main(["summary", "no-such-model", "--no-memory"]) == 2
