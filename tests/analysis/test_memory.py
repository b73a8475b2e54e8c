import pytest

from hfsnet.analysis.memory import MemoryMeasureError, StepSpec, measure_peak_memory
from hfsnet.analysis.summary import summarize
from hfsnet.models import create_model


def test_peak_of_a_training_step_covers_state_and_activations():
    spec = StepSpec("seed-cnn", batch_size=64, optimizer="adam", precision="fp32")
    peak = measure_peak_memory(spec)
    params = 890_410
    # fp32 weights, gradients and Adam's two moments: 16 bytes per parameter, plus Adam's
    # step counter (a float32 scalar for each of the 12 tensors: 6 weights, 6 biases).
    assert peak.state_bytes == 16 * params + 12 * 4
    activations = summarize(create_model("seed-cnn"), (3, 32, 32), batch_size=64).totals
    # All of it is alive when backward starts; the measured resident peak cannot be lower.
    assert peak.peak_bytes >= peak.state_bytes + activations.activation_bytes
    assert peak.peak_bytes < 20 * (peak.state_bytes + activations.activation_bytes)
    assert (peak.batch_size, peak.optimizer, peak.device) == (64, "adam", "cpu")
    assert "VmHWM" in peak.method


def test_failure_in_the_child_is_reported():
    with pytest.raises(MemoryMeasureError, match="seed-cnn"):
        measure_peak_memory(StepSpec("seed-cnn", input_shape=(3, 8, 8)))
