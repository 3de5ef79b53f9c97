"""The huge-page reader (_thp.py) on fake sysfs trees (issue 17).

Two rules the reader missed at 70a1a5f, where it believed shared memory stayed
in base pages:

- A per-size ``shmem_enabled`` of ``inherit`` takes the top-level value for
  every size, not only the PMD size whose default it is (the kernel's admin
  guide, Documentation/admin-guide/mm/transhuge.rst).
- The per-size settings are for anonymous shared memory. A memfd (the
  arena) gets PMD-sized folios whenever the top-level setting allows huge
  pages, whatever the per-size settings say (mm/shmem.c,
  shmem_allowable_huge_orders: any mapping that is not anonymous shared
  memory gets the global orders). Every size a per-size setting can enable
  is at most the PMD size, so with this rule an inherited size never sets
  the answer on its own; both rules agree on the rows below.
"""

from __future__ import annotations

import pathlib

import pytest

from trio_zc._kernels._thp import shmem_folios

from .test_sendfile import fake_thp

KiB = 1024
MiB = 1 << 20


@pytest.mark.parametrize(
    ("global_setting", "per_size", "largest"),
    [
        # inherit, for sizes other than the PMD size
        ("always", {2048: "never", 64: "inherit"}, 2 * MiB),
        ("within_size", {2048: "never", 1024: "inherit", 16: "always"}, 2 * MiB),
        ("always", {2048: "never", 512: "inherit", 64: "inherit", 32: "never"}, 2 * MiB),
        ("advise", {2048: "never", 64: "inherit"}, 4096),  # the arena never asks
        ("never", {2048: "never", 64: "inherit"}, 4096),
        ("deny", {2048: "inherit", 64: "inherit"}, 4096),
        ("never", {2048: "inherit", 128: "always", 64: "inherit"}, 128 * KiB),
        # a memfd follows the global setting, whatever the per-size ones say
        ("always", {2048: "never", 64: "never"}, 2 * MiB),
        ("within_size", {2048: "never"}, 2 * MiB),
        ("force", {2048: "never", 256: "inherit"}, 2 * MiB),
    ],
)
def test_the_largest_folio_a_memfd_may_get(
    tmp_path: pathlib.Path, global_setting: str, per_size: dict[int, str], largest: int
) -> None:
    folios = shmem_folios(fake_thp(tmp_path, global_setting, per_size))
    assert folios.largest == largest, folios.reason
    if largest > 4096:
        assert f"{largest >> 10} KiB" in folios.reason


def test_the_reason_names_the_global_setting(tmp_path: pathlib.Path) -> None:
    folios = shmem_folios(fake_thp(tmp_path, "within_size", {2048: "never", 64: "inherit"}))
    assert folios.reason == "shmem_enabled is 'within_size': a memfd may take 2048 KiB folios"
