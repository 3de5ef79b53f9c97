"""Sender CPU per GB and throughput of each kernel, as ratios to ``copy`` within one run.

The same harness as ``python -m trio_zc bench``; this script fixes the
configuration of the table in docs/kernels.rst: trio_zc's kernels only
(copy as the baseline, msg_zerocopy, io_uring, sendfile, and auto as
shipped) at 64 KiB, 1 MiB, 4 MiB and 16 MiB on loopback, ratios to
``copy`` at the same size. Exit status 1 if one of them delivered a
corrupted image.

Run: python benchmarks/kernel_cost.py [--bytes 384M] [--repeat 3] [--sizes 64K,1M,4M,16M]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trio_zc import _bench, _bench_cli
from trio_zc._bench_cases import KERNEL_CASES

#: The sizes of the table in docs/kernels.rst.
SIZES = "64K,1M,4M,16M"


def main(argv: Sequence[str] | None = None) -> int:
    """Run every kernel at every size and print the table; 1 if an image arrived corrupted."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/kernel_cost.py", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--bytes", type=_bench_cli.parse_size, default=384 << 20, help="per case and repetition")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per case; medians reported (3)")
    parser.add_argument("--sizes", type=_bench_cli.sizes, default=_bench_cli.sizes(SIZES), help=f"({SIZES})")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    results = _bench.run(KERNEL_CASES, args.sizes, args.bytes, args.repeat, _bench_cli.progress)
    summaries = _bench.summarize(results)
    print(f"Loopback TCP, median of {args.repeat} run(s) per case; ratios (x ref) to 'copy' at the same size.")
    print(_bench.table(summaries, reference="copy"))
    return 1 if _bench_cli.report_corrupt(summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
