"""A shared user network goes through cache, fit-head, finetune and summary unchanged.

These commands rebuild a checkpoint's model through the registry, where the user network is
registered once a command in this process named it (here: the training run).
"""

from hfsnet.analysis.summary import summarize
from hfsnet.cli import main
from hfsnet.interop.user_models import register_user_model
from hfsnet.models import create_model
from tests.helpers import last_json

RESNET = "hfsnet_test_usernets:tiny_resnet"


def test_cache_and_fit_head_on_a_shared_network(shared_run, tiny_folder, tmp_path, capsys):
    run, _ = shared_run
    assert main(["cache", "--checkpoint", str(run), "--data", str(tiny_folder), "--json"]) == 0
    cache = last_json(capsys)
    assert cache["width"] == 6 + 12  # the two taps, average-pooled
    assert cache["shapes"]["train_features"] == [72, 18]
    head_run = tmp_path / "head"
    assert main(["fit-head", "--checkpoint", str(run), "--data", str(tiny_folder), "--out",
                 str(head_run), "--json"]) == 0
    assert last_json(capsys)["test_acc"] > 0.6


def test_finetune_a_shared_network(shared_run, tiny_folder, tmp_path, capsys):
    run, _ = shared_run
    out = tmp_path / "tuned"
    assert main(["finetune", "--checkpoint", str(run), "--data", str(tiny_folder), "--out",
                 str(out), "--epochs", "1", "--batch-size", "16", "--precision", "fp32",
                 "--freeze-epochs", "0", "--no-channels-last", "--quiet", "--json"]) == 0
    assert last_json(capsys)["test_acc"] > 0.6


def test_summary_counts_the_shared_network(usernets):
    register_user_model(RESNET)
    model = create_model(RESNET, num_classes=3, share_layers=["layer1", "layer2"],
                         share_proj=16, width=6)
    summary = summarize(model, (3, 32, 32), batch_size=2)
    # Counted by hand from TinyResNet(width=6) (interop/conftest.py): stem conv 3->6 3x3 with
    # bias 168; layer1, two 6->6 3x3 convs and two batch norms, 2 * 324 + 2 * 12 = 672; layer2,
    # 6->12 and 12->12 3x3 convs, two batch norms and the 1x1 6->12 shortcut with bias,
    # 648 + 1296 + 2 * 24 + 84 = 2076; the unused fc 12->7, 91 (frozen); the shared head: phi
    # Linear(6 + 12 -> 16) 304 and the classifier Linear(16 -> 3) 51.
    assert summary.totals.params == 168 + 672 + 2076 + 91 + 304 + 51 == 3362
    assert (summary.totals.trainable_params, summary.totals.frozen_params) == (3362 - 91, 91)


def test_the_summary_command_takes_a_registered_user_network(usernets, capsys):
    register_user_model(RESNET)
    assert main(["summary", RESNET, "--model-opt", "share_layers=layer1,layer2",
                 "--no-memory", "--json"]) == 0
    model = create_model(RESNET, share_layers="layer1,layer2")
    assert last_json(capsys)["totals"]["params"] == sum(p.numel() for p in model.parameters())
