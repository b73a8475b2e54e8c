"""Freed memory kept for reuse: page faults per batch gone where glibc allows, and the switches
that leave glibc's defaults."""

import subprocess
import sys

import pytest

from hfsnet.cli import main
from hfsnet.train import allocator
from hfsnet.train.allocator import AllocatorError, allocator_in_effect, allocator_mode

GLIBC = allocator.glibc_version() is not None
needs_glibc = pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")

# Allocates and frees a 64 MiB tensor (over glibc's 32 MiB ceiling for its adaptive mmap
# threshold, so by default every one is a fresh mapping: 16,384 pages to fault in) twelve times
# and prints the minor page faults of each pass after the first.
FAULTS = """
import resource, sys, torch
from hfsnet.train.allocator import retain_freed_memory
print(retain_freed_memory(), file=sys.stderr)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(1 << 24).fill_(1.0)
for _ in range(11):
    before = faults()
    torch.empty(1 << 24).fill_(1.0)
    print(faults() - before)
"""
PAGES = 16_384


def page_faults(mode: str) -> tuple[list[int], str]:
    env = {"HFSNET_MALLOC": mode, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True,
                          text=True, check=True)
    return [int(n) for n in done.stdout.split()], done.stderr.strip()


@needs_glibc
def test_retained_blocks_fault_in_once():
    retained, mode = page_faults("retain")
    assert mode == "retain"
    system, mode = page_faults("system")
    assert mode == "system"
    assert all(n > 0.9 * PAGES for n in system)  # every pass maps and faults its 64 MiB anew
    # retained, the heap grows while it settles (a few passes: small allocations land in the
    # first blocks' remainders), then each pass reuses the block the one before freed
    assert all(n < PAGES / 20 for n in retained[-6:])
    assert sum(retained) < len(retained) * PAGES / 2


@needs_glibc
def test_mode_follows_the_environment():
    assert allocator_mode({}) == "retain"
    assert allocator_mode({"HFSNET_MALLOC": "retain"}) == "retain"
    assert allocator_mode({"HFSNET_MALLOC": "system"}) == "system"
    # a user who tunes glibc's malloc keeps their settings
    assert allocator_mode({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) == "system"
    assert allocator_mode({"GLIBC_TUNABLES": "glibc.cpu.x86_ibt=on"}) == "retain"


def test_elsewhere_the_system_allocator_stays(monkeypatch):
    monkeypatch.setattr(allocator, "glibc_version", lambda: None)
    assert allocator_mode({}) == "system"


def test_bad_setting_is_named():
    with pytest.raises(AllocatorError, match=r"HFSNET_MALLOC='jemalloc': expected one of "
                                             r"retain, system"):
        allocator_mode({"HFSNET_MALLOC": "jemalloc"})


def test_cli_refuses_a_bad_setting_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("HFSNET_MALLOC", "fast")
    assert main(["models"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hfsnet: error: environment variable HFSNET_MALLOC='fast': expected one "
                   "of retain, system"]


@needs_glibc
def test_every_command_retains(monkeypatch):
    monkeypatch.delenv("HFSNET_MALLOC", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(allocator, "_in_effect", "system")  # as if no command had run yet
    assert main(["models"]) == 0
    assert allocator_in_effect() == "retain"
