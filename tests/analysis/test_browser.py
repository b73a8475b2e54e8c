import os

import pytest
from PIL import Image

from hfsnet.analysis.browser import check_page, find_chromium
from hfsnet.cli import main


@pytest.fixture
def chromium():
    """Chromium, or a skip where it is not installed; `make test` installs it and sets
    HFSNET_REQUIRE_BROWSER=1 so that a missing browser fails there instead."""
    path = find_chromium()
    if path is None:
        if os.environ.get("HFSNET_REQUIRE_BROWSER") == "1":
            pytest.fail("HFSNET_REQUIRE_BROWSER=1 but no chromium is installed")
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    return path


def test_report_renders_every_image_in_chromium(chromium, compared, capsys):
    out = compared.out
    page = check_page(out / "report.html")
    assert page.images_total == 6
    assert page.images_loaded == 6
    assert page.height > 2000  # six figures and the tables, at 1200 px wide

    assert main(compared.args("--screenshot")) == 0
    assert "renders in Chromium (6 images)" in capsys.readouterr().out
    with Image.open(out / "report.png") as shot:
        assert shot.format == "PNG"
        assert shot.size == (1200, page.height)
        # Not a blank page: a rendered report has many distinct colours.
        assert len(shot.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50


def test_a_broken_image_is_detected(chromium, tmp_path):
    page = tmp_path / "page.html"
    page.write_text('<!DOCTYPE html><html><head><title>t</title></head><body>'
                    '<img src="data:image/png;base64,iVBORw0KGgoAAAA="></body></html>')
    check = check_page(page)
    assert (check.images_loaded, check.images_total) == (0, 1)
