"""Sender CPU per GB and throughput of each kernel, as ratios within one run.

The same harness as ``python -m trio_zc bench``; this script fixes the
configuration recorded in docs/kernels.rst: every kernel (copy as the
baseline, msg_zerocopy, io_uring, sendfile, and auto as shipped) at 64 KiB,
1 MiB, 4 MiB and 16 MiB on loopback.

Run: python benchmarks/kernel_cost.py [--bytes 512M] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys

from trio_zc import _bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", default="512M", help="bytes per case and repetition")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    return _bench.main(
        ["copy", "msg_zerocopy", "io_uring", "sendfile", "auto"],
        [64 << 10, 1 << 20, 4 << 20, 16 << 20],
        _bench.parse_size(args.bytes),
        args.repeat,
    )


if __name__ == "__main__":
    sys.exit(main())
