"""``python -m trio_zc``: the demo and the project's small tools."""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any, NoReturn

from . import _lifecycle


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes can be one line (the demo's are).

    argparse prints the whole usage before the error; the demo's options
    are few, and one line saying what is wrong and what to do reads better.
    """

    def __init__(self, *args: Any, one_line_errors: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.one_line_errors = one_line_errors

    def error(self, message: str) -> NoReturn:
        if not self.one_line_errors:
            super().error(message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    parser = _Parser(prog="python -m trio_zc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        one_line_errors=True,
        help="is it safe to reuse a buffer after sendfile? the naive way, trio_zc's kernels, their speed",
        description="Send processed images over loopback to a receiver that checks every one: first the"
        " naive way (sendfile or MSG_ZEROCOPY from a buffer rewritten as soon as the call returns), then"
        " with trio_zc on every kernel; then time the sends alone against trio's SocketStream.send_all.",
    )
    demo.add_argument("--images", type=int, default=40, help="distinct images to send (default 40)")
    demo.add_argument("--clients", type=int, default=8, help="connections at once (default 8)")
    demo.add_argument(
        "--kernels", default="auto,io_uring,msg_zerocopy,sendfile,copy", help="comma-separated kernels to run"
    )
    demo.add_argument("--repeat", type=int, default=5, help="timed runs per kernel, median reported (default 5)")
    demo.add_argument(
        "--send-mb", type=int, default=250, help="megabytes each timed run sends, the images over and over (250)"
    )
    demo.add_argument("--chart", metavar="PNG", help="also draw the timed comparison to PNG (needs Pillow)")
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
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        (demo if args.command == "demo" else parser).error(f"unrecognized arguments: {' '.join(unknown)}")

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

    from ._demo import UsageError, check_options, run_demo

    try:
        options = check_options(
            images=args.images,
            clients=args.clients,
            kernels=args.kernels,
            repeat=args.repeat,
            send_mb=args.send_mb,
            chart=args.chart,
        )
    except UsageError as exc:
        print(f"{demo.prog}: error: {exc}", file=sys.stderr)
        return 2
    status: int = run_demo(options)
    return status


if __name__ == "__main__":
    sys.exit(main())
