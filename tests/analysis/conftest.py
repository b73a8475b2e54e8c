"""One small comparison (2 models x 2 seeds x 2 epochs on a tiny image folder), run once and
shared by the tests that read its outputs."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hfsnet.cli import main
from tests.conftest import write_image_folder
from tests.helpers import TINY_HFS, model_opt_flags

TINY_HFS_FLAGS = model_opt_flags(TINY_HFS, prefix="hfs:")


@dataclass
class Compared:
    data: Path
    out: Path
    payload: dict[str, Any]

    def args(self, *extra: str, out: Path | None = None) -> list[str]:
        """The command line that produced this comparison, with ``extra`` flags appended."""
        return ["compare", "--models", "seed-cnn,hfs", *TINY_HFS_FLAGS, "--data", str(self.data),
                "--seeds", "2", "--epochs", "2", "--set", "batch_size=16",
                "--set", "precision=fp32", "--set", "lr=0.003", "--out", str(out or self.out),
                "--quiet", *extra]


@pytest.fixture(scope="session")
def compared(tmp_path_factory) -> Compared:
    root = tmp_path_factory.mktemp("compare")
    result = Compared(write_image_folder(root / "data"), root / "out", {})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HFSNET_CACHE", str(root / "cache"))
        assert main(result.args("--json")) == 0
    result.payload = json.loads((result.out / "compare.json").read_text())
    return result
