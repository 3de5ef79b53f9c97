"""``python -m trio_zc``: the demo and the project's small tools."""

from __future__ import annotations

import argparse
import pathlib
import sys

from . import _lifecycle


def _write_lifecycle_docs(page: pathlib.Path) -> None:
    text = page.read_text()
    mermaid = "\n".join("   " + line for line in _lifecycle.render_mermaid().splitlines())
    blocks = {
        "MERMAID": f".. code-block:: text\n\n{mermaid}\n",
        "TABLE": _lifecycle.render_table() + "\n",
    }
    for name, body in blocks.items():
        begin, end = f".. BEGIN GENERATED {name}\n", f".. END GENERATED {name}"
        start = text.index(begin) + len(begin)
        text = text[:start] + "\n" + body + "\n" + text[text.index(end, start) :]
    page.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trio_zc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="serve processed images over loopback and verify every byte")
    demo.add_argument("--images", type=int, default=10, help="images per client (default 10)")
    demo.add_argument("--clients", type=int, default=8, help="concurrent clients per kernel (default 8)")
    demo.add_argument(
        "--kernels", default="auto,io_uring,msg_zerocopy,sendfile,copy", help="comma-separated kernels to run"
    )
    from . import _bench_cli

    bench = sub.add_parser(
        "bench", help="measure how fast each way of sending large buffers is, on loopback (see docs/benchmarks)"
    )
    _bench_cli.add_arguments(bench)
    life = sub.add_parser("lifecycle", help="print the lease life cycle (Mermaid and table)")
    life.add_argument(
        "--write-docs",
        metavar="PAGE",
        nargs="?",
        const="docs/lifecycle.rst",
        help="rewrite the generated blocks of PAGE (default docs/lifecycle.rst)",
    )
    args = parser.parse_args(argv)

    if args.command == "lifecycle":
        if args.write_docs:
            _write_lifecycle_docs(pathlib.Path(args.write_docs))
        else:
            print(_lifecycle.render_mermaid())
            print()
            print(_lifecycle.render_table())
        return 0

    if args.command == "bench":
        code: int = _bench_cli.main(args)
        return code

    from ._demo import run_demo

    kernels = tuple(k for k in args.kernels.split(",") if k)
    status: int = run_demo(images=args.images, clients=args.clients, kernels=kernels)
    return status


if __name__ == "__main__":
    sys.exit(main())
