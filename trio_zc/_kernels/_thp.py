"""How large a page-cache folio of the arena's memfd can be (transparent huge pages).

Why it matters: the sendfile kernel makes sent memory reusable by punching
its pages out of the memfd, so that the socket keeps the old pages and the
next writer gets new ones. A punch that covers only part of a large folio
cannot detach it: the kernel zeroes that part *in place*, under the socket's
feet, and the client receives zeros. So a punch must always cover whole
folios, and the pool must know how large they can get.

Shared-memory THP is configured in sysfs: the global
``/sys/kernel/mm/transparent_hugepage/shmem_enabled`` (always, within_size,
advise, never, deny, force) and, since Linux 6.11, one setting per folio
size in ``hugepages-<size>kB/shmem_enabled`` (always, inherit, within_size,
advise, never), where "inherit" means the global value, whatever the size.
The per-size settings are for anonymous shared memory: a memfd gets
PMD-sized folios whenever the global setting allows huge pages, whatever
the PMD size's own setting says. The arena maps its memfd with
``MADV_NOHUGEPAGE`` and never asks for huge pages, so "advise" gives none;
to stay safe across kernel versions, every other setting that allows a size
is taken to mean the folio may be that large -- except "never" and "deny".
"""

from __future__ import annotations

import pathlib
import re

import attrs

from .._arena import PAGE_SIZE

THP_DIR = pathlib.Path("/sys/kernel/mm/transparent_hugepage")
_LARGE = {"always", "within_size", "force"}


def _selected(text: str) -> str:
    """The bracketed choice of a sysfs setting like ``always [never] advise``."""
    match = re.search(r"\[([a-z_]+)\]", text)
    return match.group(1) if match else text.strip()


@attrs.frozen
class ShmemFolios:
    """What the THP settings allow for shared memory."""

    #: The largest folio (bytes) that may back the arena.
    largest: int
    #: Why, in words (for statistics and errors).
    reason: str


def shmem_folios(thp_dir: pathlib.Path = THP_DIR) -> ShmemFolios:
    """Read the THP settings under *thp_dir* (a parameter so tests can fake it)."""
    try:
        global_setting = _selected((thp_dir / "shmem_enabled").read_text())
    except OSError:
        return ShmemFolios(PAGE_SIZE, "no transparent huge pages in this kernel")
    try:
        pmd_size = int((thp_dir / "hpage_pmd_size").read_text())
    except (OSError, ValueError):
        pmd_size = 2 * 1024 * 1024
    if global_setting == "deny":
        return ShmemFolios(PAGE_SIZE, "shmem_enabled is 'deny'")
    sizes: dict[int, str] = {}
    for path in thp_dir.glob("hugepages-*kB"):
        match = re.fullmatch(r"hugepages-(\d+)kB", path.name)
        if not match:
            continue
        try:
            setting = _selected((path / "shmem_enabled").read_text())
        except OSError:
            continue
        sizes[int(match.group(1)) * 1024] = setting
    if not sizes:
        # Before per-size settings, the global one governed PMD-sized folios.
        sizes[pmd_size] = "inherit"
    largest = PAGE_SIZE
    why = f"shmem_enabled is '{global_setting}'"
    if global_setting in _LARGE:
        # The per-size settings govern anonymous shared memory; a memfd is
        # not that, and Linux gives it PMD-sized folios whenever the global
        # setting allows huge pages, whatever hugepages-<PMD>kB says (mm/shmem.c:
        # shmem_allowable_huge_orders returns the global orders for any
        # mapping that is not anonymous shared memory).
        largest = pmd_size
        why = f"shmem_enabled is '{global_setting}': a memfd may take {pmd_size >> 10} KiB folios"
    for size, setting in sorted(sizes.items()):
        # "inherit" takes the top-level value, for every size (the kernel's
        # admin guide, Documentation/admin-guide/mm/transhuge.rst), not only
        # for the PMD size, whose default it is.
        effective = global_setting if setting == "inherit" else setting
        if global_setting == "force" or effective in _LARGE:
            if size > largest:
                largest = size
                why = f"shmem THP allows {size >> 10} KiB folios ('{effective}')"
    if largest == PAGE_SIZE:
        why += ": shared memory stays in base pages"
    return ShmemFolios(largest, why)
