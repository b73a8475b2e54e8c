import statistics

from hfsnet.analysis.compare import stat
from hfsnet.analysis.verdicts import (
    INCONCLUSIVE,
    MIXED,
    NOT_SUPPORTED,
    SUPPORTED,
    judge,
    seed_status,
)


def model(name, *, params=100, macs=1000, peak=1000, acc=(0.5, 0.5, 0.5), gap=(0.0, 0.0, 0.0),
          rise=(0.0, 0.0, 0.0), seconds=(10.0, 10.0, 10.0)):
    return {
        "name": name,
        "totals": {"params": params, "macs": macs},
        "peak_memory": {"peak_bytes": peak, "batch_size": 32},
        "aggregate": {"test_acc": stat(list(acc)), "gap": stat(list(gap)),
                      "test_loss_rise": stat(list(rise)), "train_seconds": stat(list(seconds)),
                      "images_per_second": stat([100.0, 100.0, 100.0])},
    }


def verdicts(candidate, baseline):
    payload = {"setup": {"baseline": "base"}, "models": [baseline, candidate]}
    return {v.claim: v for v in judge(payload)}


def test_two_standard_errors_separate_seed_noise_from_a_difference():
    # Means 0.50 and 0.52, std 0.01 each over 3 seeds: SE of the difference
    # sqrt(2 * 0.01^2 / 3) = 0.00816, so 2 SE = 0.0163 < 0.02: a real difference.
    base = stat([0.49, 0.50, 0.51])
    better = stat([0.51, 0.52, 0.53])
    assert statistics.stdev(base["values"]) == base["std"]
    assert seed_status(better, base, lower_is_better=False) == SUPPORTED
    assert seed_status(base, better, lower_is_better=False) == NOT_SUPPORTED
    # 0.01 apart is within 2 SE: no verdict either way.
    close = stat([0.50, 0.51, 0.52])
    assert seed_status(close, base, lower_is_better=False) == INCONCLUSIVE
    # One seed gives no estimate of the noise at all.
    assert seed_status(stat([0.9]), stat([0.1]), lower_is_better=False) == INCONCLUSIVE


def test_counts_compare_exactly_and_memory_within_five_percent_is_unclear():
    v = verdicts(model("cand", params=99, macs=1001, peak=1040), model("base"))
    assert v["fewer parameters"].status == SUPPORTED
    assert "99 vs 100 parameters (-1.0%)" in v["fewer parameters"].evidence
    assert v["less compute"].status == NOT_SUPPORTED
    assert v["less memory"].status == INCONCLUSIVE  # +4%
    assert verdicts(model("cand", peak=940), model("base"))["less memory"].status == SUPPORTED
    assert verdicts(model("cand", peak=1060), model("base"))["less memory"].status == (
        NOT_SUPPORTED)


def test_overfitting_combines_the_gap_and_the_test_loss_rise():
    base = model("base", gap=(0.10, 0.11, 0.12), rise=(0.20, 0.21, 0.22))
    smaller_gap = (0.01, 0.02, 0.03)
    # Both smaller: supported; the gap alone (rise within noise): still decides.
    both = model("cand", gap=smaller_gap, rise=(0.00, 0.01, 0.02))
    assert verdicts(both, base)["less overfitting"].status == SUPPORTED
    gap_only = model("cand", gap=smaller_gap, rise=(0.19, 0.21, 0.23))
    assert verdicts(gap_only, base)["less overfitting"].status == SUPPORTED
    # Smaller gap but a larger loss rise: the measures disagree.
    split = model("cand", gap=smaller_gap, rise=(0.40, 0.41, 0.42))
    assert verdicts(split, base)["less overfitting"].status == MIXED
    same = model("cand", gap=(0.10, 0.11, 0.12), rise=(0.20, 0.21, 0.22))
    assert verdicts(same, base)["less overfitting"].status == INCONCLUSIVE
    assert "train minus test accuracy 2.00 ± 1.00 vs 11.00 ± 1.00 points" in verdicts(
        both, base)["less overfitting"].evidence


def test_every_model_but_the_baseline_gets_every_claim():
    payload = {"setup": {"baseline": "base"},
               "models": [model("a", acc=(0.6, 0.61, 0.62)), model("base"), model("b")]}
    result = judge(payload)
    assert [(v.model, v.baseline) for v in result] == [("a", "base")] * 6 + [("b", "base")] * 6
    assert result[5].claim == "higher accuracy" and result[5].status == SUPPORTED
    assert "+11.00 points" in result[5].evidence
