"""Downloading a dataset file with an MD5 check, so a partial or wrong file is never used."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import BinaryIO

from .digest import BLOCK
from .errors import DataError

TIMEOUT = 60  # seconds without progress before a download is abandoned

log = logging.getLogger(__name__)


def fetch(url: str, dest: Path, md5: str) -> None:
    """Download ``url`` to ``dest`` through a temporary file beside it, renamed into place only
    if its MD5 matches; raises DataError (leaving nothing behind) otherwise."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    log.info("downloading %s to %s", url, dest)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT) as src:
            actual = _copy_md5(src, out)
        if actual != md5:
            raise DataError(f"{dest}: downloaded from {url} with MD5 {actual}, expected {md5}; "
                            "the download was deleted")
        os.replace(temp, dest)
    except OSError as err:  # URLError is an OSError too
        raise DataError(f"could not download {url} to {dest}: {err}") from err
    finally:
        Path(temp).unlink(missing_ok=True)


def _copy_md5(src: BinaryIO, out: BinaryIO) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # a checksum against corruption, not security
    while block := src.read(BLOCK):
        digest.update(block)
        out.write(block)
    return digest.hexdigest()
