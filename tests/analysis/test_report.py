import base64
import sys

import pytest
from PIL import Image as PILImage

from hfsnet.analysis.compare import CompareError
from hfsnet.analysis.document import Bullets, Heading, Image, Paragraph, Table, to_html, to_markdown
from hfsnet.analysis.report import _make_plots


def test_markdown_and_html_render_the_same_blocks(tmp_path):
    PILImage.new("RGB", (3, 2), (255, 0, 0)).save(tmp_path / "red.png")
    blocks = [Heading("Title <1>", 1), Paragraph("a | b"), Paragraph("careful", emphasis=True),
              Table(["x", "y|z"], [["1", "<b>"]]), Bullets(["one", "two"]),
              Image("Red", "red.png")]
    assert to_markdown(blocks) == (
        "# Title <1>\n\na | b\n\n**careful**\n\n| x | y\\|z |\n|---|---|\n| 1 | <b> |\n\n"
        "- one\n- two\n\n![Red](red.png)\n")
    page = to_html(blocks, "T", tmp_path)
    assert "<h1>Title &lt;1&gt;</h1>" in page and "<td>&lt;b&gt;</td>" in page
    assert '<p class="warning">careful</p>' in page
    uri = page.split('src="', 1)[1].split('"', 1)[0]
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == (tmp_path / "red.png").read_bytes()


def test_compare_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "hfsnet.analysis.plots", raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(CompareError, match=r"pip install 'hfsnet\[plots\]'"):
        _make_plots({}, tmp_path)
