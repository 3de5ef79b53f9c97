"""The huge-page reader (_thp.py) on fake sysfs trees: per-size 'inherit' (issue 17)."""

from __future__ import annotations

import pathlib

import pytest

from trio_zc._thp import shmem_folios

from .test_sendfile import fake_thp

KiB = 1024
MiB = 1 << 20


# Documentation/admin-guide/mm/transhuge.rst: a per-size shmem_enabled of
# "inherit" takes the top-level shmem_enabled value -- for any size, not only
# the PMD size (whose default it is; the other sizes default to "never").
@pytest.mark.parametrize(
    ("global_setting", "per_size", "largest"),
    [
        ("always", {2048: "never", 64: "inherit"}, 64 * KiB),
        ("within_size", {2048: "never", 1024: "inherit", 16: "always"}, 1 * MiB),
        ("always", {2048: "never", 512: "inherit", 64: "inherit", 32: "never"}, 512 * KiB),
        ("force", {2048: "never", 256: "inherit"}, 2 * MiB),  # force: every size, as before
        ("advise", {2048: "never", 64: "inherit"}, 4096),  # the arena never asks
        ("never", {2048: "never", 64: "inherit"}, 4096),
        ("deny", {2048: "inherit", 64: "inherit"}, 4096),
        ("always", {2048: "inherit", 64: "inherit"}, 2 * MiB),
        ("never", {2048: "inherit", 128: "always", 64: "inherit"}, 128 * KiB),
    ],
)
def test_inherit_takes_the_global_setting_for_every_size(
    tmp_path: pathlib.Path, global_setting: str, per_size: dict[int, str], largest: int
) -> None:
    folios = shmem_folios(fake_thp(tmp_path, global_setting, per_size))
    assert folios.largest == largest, folios.reason
    if largest > 4096:
        assert f"{largest >> 10} KiB" in folios.reason


def test_the_reason_names_the_inherited_value(tmp_path: pathlib.Path) -> None:
    folios = shmem_folios(fake_thp(tmp_path, "within_size", {2048: "never", 64: "inherit"}))
    assert folios.reason == "shmem THP allows 64 KiB folios ('within_size')"
