import json
import os
import re
import statistics

import pytest
from PIL import Image

from hfsnet.analysis.compare import CompareSpec, config_difference
from hfsnet.analysis.verdicts import CLAIMS, INCONCLUSIVE, MIXED, NOT_SUPPORTED, SUPPORTED
from hfsnet.cli import main
from hfsnet.train.config import RECIPES, TrainConfig

# seed-cnn at 3x16x16, by hand: 16 -> conv 14 -> conv 12 -> pool 6 -> conv 4 -> conv 2 -> pool 1.
SEED_CNN_16_PARAMS = 896 + 9_248 + 18_496 + 36_928 + (64 * 512 + 512) + (512 * 3 + 3)
SEED_CNN_16_MACS = (14 * 14 * 32 * 3 * 9 + 12 * 12 * 32 * 32 * 9 + 4 * 4 * 64 * 32 * 9
                    + 2 * 2 * 64 * 64 * 9 + 64 * 512 + 512 * 3)


def test_writes_reports_plots_runs_and_json(compared):
    out, payload = compared.out, compared.payload
    for name in ("report.md", "report.html", "compare.json"):
        assert (out / name).stat().st_size > 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "hfs-seed0", "hfs-seed1", "seed-cnn-seed0", "seed-cnn-seed1"]
    assert set(payload["plots"].values()) == {
        "test_acc.png", "train_vs_test.png", "acc_vs_params.png", "acc_vs_time.png",
        "confusion_seed-cnn.png", "confusion_hfs.png"}
    for name in payload["plots"].values():
        with Image.open(out / "plots" / name) as image:
            assert image.format == "PNG" and image.width > 300
    md = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(linked) == 6 and all((out / link).exists() for link in linked)
    assert (out / "report.html").read_text().count('src="data:image/png;base64,') == 6


def test_numbers_agree_with_the_runs(compared):
    out, payload = compared.out, compared.payload
    models = {m["name"]: m for m in payload["models"]}
    seed_cnn = models["seed-cnn"]
    assert seed_cnn["totals"]["params"] == SEED_CNN_16_PARAMS
    assert seed_cnn["totals"]["macs"] == SEED_CNN_16_MACS
    for m in models.values():
        results = [json.loads((out / r["run_dir"] / "result.json").read_text())
                   for r in m["runs"]]
        accs = [r["test_acc"] for r in results]
        assert m["aggregate"]["test_acc"]["mean"] == pytest.approx(statistics.fmean(accs))
        assert m["aggregate"]["test_acc"]["std"] == pytest.approx(statistics.stdev(accs))
        # The confusion matrix (both seeds, 18 test images each) re-evaluates the final
        # checkpoints: its diagonal must give back the trainer's own test accuracy.
        confusion = m["confusion"]
        assert sum(map(sum, confusion)) == 36
        correct = sum(confusion[i][i] for i in range(3))
        assert correct / 36 == pytest.approx(statistics.fmean(accs))
        history = results[0]["history"]
        run = m["runs"][0]
        assert run["gap"] == pytest.approx(history[-1]["train_acc"] - history[-1]["test_acc"])
        assert run["test_loss_rise"] == pytest.approx(
            history[-1]["test_loss"] - min(h["test_loss"] for h in history))
        peak = m["peak_memory"]
        assert peak["peak_bytes"] > peak["state_bytes"] > m["totals"]["param_bytes"]
        assert peak["batch_size"] == 16


def test_verdicts_cover_every_claim_and_follow_the_numbers(compared):
    out, payload = compared.out, compared.payload
    verdicts = {v["claim"]: v for v in payload["verdicts"]}
    assert list(verdicts) == list(CLAIMS)
    assert all(v["model"] == "hfs" and v["baseline"] == "seed-cnn" for v in verdicts.values())
    models = {m["name"]: m for m in payload["models"]}
    hfs, base = models["hfs"]["totals"], models["seed-cnn"]["totals"]
    fewer = SUPPORTED if hfs["params"] < base["params"] else NOT_SUPPORTED
    assert verdicts["fewer parameters"]["status"] == fewer
    less = SUPPORTED if hfs["macs"] < base["macs"] else NOT_SUPPORTED
    assert verdicts["less compute"]["status"] == less
    statuses = {SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, MIXED}
    assert all(v["status"] in statuses for v in verdicts.values())
    md = (out / "report.md").read_text()
    for claim in CLAIMS:
        assert f"| {claim} | hfs | seed-cnn | {verdicts[claim]['status']} |" in md
    # 2 epochs instead of the default recipe's 3: the report must say so.
    assert "Reduced run: 2 epochs instead of the recipe's 3." in md


def test_finished_runs_are_reused(compared, capsys):
    out = compared.out
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/result.json")}
    assert main(compared.args()) == 0
    log = capsys.readouterr().out
    assert log.count("reusing") == 4 + 2  # four runs, two memory measurements
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_a_run_without_its_result_is_resumed_from_its_checkpoint(compared, capsys):
    result = compared.out / "runs" / "hfs-seed1" / "result.json"
    before = json.loads(result.read_text())
    result.unlink()
    assert main(compared.args()) == 0
    assert f"resuming {result.parent}" in capsys.readouterr().out
    after = json.loads(result.read_text())
    assert after["history"] == before["history"]
    assert after["test_acc"] == before["test_acc"]


def test_a_run_with_another_config_is_never_overwritten(compared, capsys):
    args = compared.args()
    args[args.index("lr=0.003")] = "lr=0.01"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "lr" in err


@pytest.mark.parametrize("change,message", [
    (["--models", "seed-cnn,nope"], "unknown model 'nope'"),
    (["--models", "seed-cnn,seed-cnn"], "--models"),
    (["--set", "seed=3"], "--set seed"),
    (["--set", "no_such_key=1"], "unknown config key 'no_such_key'"),
    (["--model-opt", "hfs-seed:norm=true"], "--model-opt hfs-seed"),
    (["--baseline", "hfs-seed"], "--baseline"),
    (["--seeds", "0"], "--seeds"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--set", "track_test=false"], "--set track_test"),
])
def test_bad_requests_exit_2_naming_the_flag(compared, tmp_path, capsys, change, message):
    args = compared.args(*change, out=tmp_path / "out")
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()


def test_recipes_that_skip_per_epoch_test_evaluation_get_it_back(tmp_path, monkeypatch):
    monkeypatch.setitem(RECIPES, "no-curves", {"track_test": False})
    spec = CompareSpec(models=["seed-cnn"], data="x", recipe="no-curves", seeds=1, out=tmp_path)
    assert spec.config("seed-cnn", 0).track_test is True


def test_fields_added_to_the_config_after_a_run_count_as_their_defaults():
    wanted = TrainConfig(lr=0.01, label_smoothing=0.1).to_dict()
    older = {k: v for k, v in wanted.items() if k not in ("cutout", "label_smoothing")}
    # cutout is at its default (the behaviour before the field existed); label smoothing is not.
    assert config_difference(older, wanted) == ["label_smoothing"]
    assert config_difference({**wanted, "lr": 0.02}, wanted) == ["lr"]
    assert config_difference(wanted, wanted) == []


def test_jobs_train_the_runs_in_child_processes_then_reuse_them(compared, tmp_path, capsys):
    out = tmp_path / "parallel"
    assert main(compared.args("--jobs", "2", out=out)) == 0
    log = capsys.readouterr().out
    assert "training 4 runs, 2 at a time" in log
    # the parent found every run finished by its children
    assert log.count("reusing") == 4
    payload = json.loads((out / "compare.json").read_text())
    assert payload["setup"]["jobs"] == 2
    threads = payload["setup"]["threads_per_run"]
    assert threads == max(1, (os.cpu_count() or 1) // 2)
    assert f"2 runs trained at a time with {threads} torch thread(s) each" in \
        (out / "report.md").read_text()
    for model in payload["models"]:
        assert [r["seed"] for r in model["runs"]] == [0, 1]
        for run in model["runs"]:
            history = json.loads((out / run["run_dir"] / "result.json").read_text())["history"]
            assert [h["epoch"] for h in history] == [1, 2]
    # the child processes ran with one thread each, and the config they saved does not say so
    saved = json.loads((out / "runs" / "hfs-seed0" / "config.json").read_text())
    assert saved["threads"] == 0
