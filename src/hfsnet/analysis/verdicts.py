"""Whether the measurements support each claim of the seed, model by model, against a baseline.

The seed claims that feature sharing gives fewer parameters, less compute, less memory, faster
training, less overfitting and higher accuracy than a plain CNN. Counted quantities (parameters,
MACs) are exact. The peak memory is one measurement per model, so differences under 5% are
called unclear. Quantities that vary with the seed are compared by their means: a difference
counts only when it exceeds two standard errors of the difference (a rough 95% rule; with three
seeds it can miss real effects, and it says so by calling them inconclusive).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from hfsnet.analysis.units import format_bytes, format_count, format_si

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive"
MIXED = "mixed"

CLAIMS = ("fewer parameters", "less compute", "less memory", "faster training",
          "less overfitting", "higher accuracy")
MEMORY_TOLERANCE = 0.05  # relative; below it two single measurements are not told apart
SIGNIFICANCE_SE = 2.0  # standard errors a seed-averaged difference must exceed


@dataclass
class Verdict:
    claim: str
    model: str
    baseline: str
    status: str
    evidence: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _relative(candidate: float, baseline: float) -> str:
    if baseline == 0:
        return "n/a"
    return f"{100 * (candidate - baseline) / baseline:+.1f}%"


def _direction(better: bool) -> str:
    return SUPPORTED if better else NOT_SUPPORTED


def _exact(candidate: float, baseline: float) -> str:
    """Status of "candidate is lower" for exactly counted quantities."""
    return INCONCLUSIVE if candidate == baseline else _direction(candidate < baseline)


def _measured_once(candidate: float, baseline: float) -> str:
    """Status of "candidate is lower" for single measurements with a relative tolerance."""
    if abs(candidate - baseline) <= MEMORY_TOLERANCE * abs(baseline):
        return INCONCLUSIVE
    return _direction(candidate < baseline)


def seed_status(candidate: dict[str, Any], baseline: dict[str, Any], *,
                lower_is_better: bool) -> str:
    """Status of "candidate is better" for seed-averaged stats (``mean``, ``std``, ``n``)."""
    if candidate["std"] is None or baseline["std"] is None:
        return INCONCLUSIVE  # one seed: the seed-to-seed noise is unknown
    se = math.sqrt(candidate["std"] ** 2 / candidate["n"] + baseline["std"] ** 2 / baseline["n"])
    diff = candidate["mean"] - baseline["mean"]
    if abs(diff) <= SIGNIFICANCE_SE * se:
        return INCONCLUSIVE
    return _direction(diff < 0 if lower_is_better else diff > 0)


def _pm(s: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    mean = f"{scale * s['mean']:.{digits}f}"
    return mean if s["std"] is None else f"{mean} ± {scale * s['std']:.{digits}f}"


def _params(m: dict[str, Any], b: dict[str, Any]) -> tuple[str, str]:
    c, base = m["totals"]["params"], b["totals"]["params"]
    return _exact(c, base), (f"{format_count(c)} vs {format_count(base)} parameters "
                             f"({_relative(c, base)})")


def _compute(m: dict[str, Any], b: dict[str, Any]) -> tuple[str, str]:
    c, base = m["totals"]["macs"], b["totals"]["macs"]
    return _exact(c, base), (f"{format_si(c)} vs {format_si(base)} MACs per image "
                             f"({_relative(c, base)})")


def _memory(m: dict[str, Any], b: dict[str, Any]) -> tuple[str, str]:
    c, base = m["peak_memory"]["peak_bytes"], b["peak_memory"]["peak_bytes"]
    batch = m["peak_memory"]["batch_size"]
    return _measured_once(c, base), (
        f"measured peak of a training step {format_bytes(c)} vs {format_bytes(base)} at batch "
        f"{batch} ({_relative(c, base)}; one measurement each, differences within "
        f"{100 * MEMORY_TOLERANCE:.0f}% count as unclear)")


def _speed(m: dict[str, Any], b: dict[str, Any]) -> tuple[str, str]:
    c, base = m["aggregate"]["train_seconds"], b["aggregate"]["train_seconds"]
    ips_c, ips_b = m["aggregate"]["images_per_second"], b["aggregate"]["images_per_second"]
    return seed_status(c, base, lower_is_better=True), (
        f"training time {_pm(c, digits=0)} s vs {_pm(base, digits=0)} s "
        f"({_relative(c['mean'], base['mean'])}); {_pm(ips_c, digits=0)} vs "
        f"{_pm(ips_b, digits=0)} images/s")


def _overfitting(m: dict[str, Any], b: dict[str, Any]) -> tuple[str, str]:
    gap, gap_b = m["aggregate"]["gap"], b["aggregate"]["gap"]
    rise, rise_b = m["aggregate"]["test_loss_rise"], b["aggregate"]["test_loss_rise"]
    statuses = {seed_status(gap, gap_b, lower_is_better=True),
                seed_status(rise, rise_b, lower_is_better=True)} - {INCONCLUSIVE}
    # One conclusive measure decides; two that disagree are reported as such.
    status = statuses.pop() if len(statuses) == 1 else (MIXED if statuses else INCONCLUSIVE)
    return status, (
        f"train minus test accuracy {_pm(gap, 100)} vs {_pm(gap_b, 100)} points; final test "
        f"loss above its minimum {_pm(rise, digits=3)} vs {_pm(rise_b, digits=3)}")


def _accuracy(m: dict[str, Any], b: dict[str, Any]) -> tuple[str, str]:
    c, base = m["aggregate"]["test_acc"], b["aggregate"]["test_acc"]
    return seed_status(c, base, lower_is_better=False), (
        f"final test accuracy {_pm(c, 100)}% vs {_pm(base, 100)}% "
        f"({100 * (c['mean'] - base['mean']):+.2f} points)")


_JUDGES = dict(zip(CLAIMS, (_params, _compute, _memory, _speed, _overfitting, _accuracy),
                   strict=True))


def judge(payload: dict[str, Any]) -> list[Verdict]:
    """One verdict per claim for every model other than the baseline."""
    models = {m["name"]: m for m in payload["models"]}
    base_name = payload["setup"]["baseline"]
    base = models[base_name]
    verdicts = []
    for name, model in models.items():
        if name == base_name:
            continue
        for claim, fn in _JUDGES.items():
            status, evidence = fn(model, base)
            verdicts.append(Verdict(claim, name, base_name, status, evidence))
    return verdicts
