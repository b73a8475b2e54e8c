"""Downloading a dataset file with an MD5 check, so a partial or wrong file is never used."""

from __future__ import annotations

import hashlib
import logging
import urllib.request
from pathlib import Path
from typing import BinaryIO

from hfsnet.fsutil import atomic_write

from .errors import DataError

TIMEOUT = 60  # seconds without progress before a download is abandoned
BLOCK = 1 << 20  # bytes read from the network per step

log = logging.getLogger(__name__)


def fetch(url: str, dest: Path, md5: str) -> None:
    """Download ``url`` to ``dest`` through a temporary file beside it, renamed into place only
    if its MD5 matches; raises DataError (network, checksum) or WriteError (disk), leaving
    nothing behind."""
    log.info("downloading %s to %s", url, dest)
    atomic_write(dest, lambda out: _download_checked(url, out, dest, md5))


def _download_checked(url: str, out: BinaryIO, dest: Path, md5: str) -> None:
    # Network errors become DataError here; errors writing ``out`` are atomic_write's to report.
    with _open_url(url, dest) as src:
        actual = _copy_md5(src, out, url, dest)
    if actual != md5:
        raise DataError(f"{dest}: downloaded from {url} with MD5 {actual}, expected {md5}; "
                        "the download was deleted")


def _copy_md5(src: BinaryIO, out: BinaryIO, url: str, dest: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # a checksum against corruption, not security
    while block := _read_block(src, url, dest):
        digest.update(block)
        out.write(block)
    return digest.hexdigest()


def _open_url(url: str, dest: Path) -> BinaryIO:
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT)
    except OSError as err:  # URLError is an OSError too
        raise _network_error(url, dest, err) from err


def _read_block(src: BinaryIO, url: str, dest: Path) -> bytes:
    try:
        return src.read(BLOCK)
    except OSError as err:
        raise _network_error(url, dest, err) from err


def _network_error(url: str, dest: Path, err: OSError) -> DataError:
    return DataError(f"could not download {url} to {dest}: {err}")
