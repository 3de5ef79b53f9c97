"""``python -m trio_zc``: the demo and the project's small tools."""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any, NoReturn

from . import _lifecycle


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes can be one line (every subcommand's are).

    argparse prints the whole usage before the error; one line saying what
    is wrong and what to do reads better, and ``--help`` has the rest.
    """

    def __init__(self, *args: Any, one_line_errors: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.one_line_errors = one_line_errors

    def error(self, message: str) -> NoReturn:
        if not self.one_line_errors:
            super().error(message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: The generated blocks of the life-cycle page, and what each holds.
_LIFECYCLE_BLOCKS = ("DIAGRAM", "TABLE")
#: Where the diagram's picture goes, relative to the page's folder.
LIFECYCLE_SVG = pathlib.PurePosixPath("_static/lifecycle.svg")


def _lifecycle_docs_problem(page: pathlib.Path) -> str | None:
    """Why *page* cannot take the generated life cycle, in one line; None if it can."""
    if not page.is_file():
        return (
            f"--write-docs: {page} does not exist; run this in the top folder of a trio_zc checkout"
            " (where docs/lifecycle.rst is), or give the page's path"
        )
    try:
        text = page.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return f"--write-docs: cannot read {page}: {exc}"
    for name in _LIFECYCLE_BLOCKS:
        begin, end = f".. BEGIN GENERATED {name}\n", f".. END GENERATED {name}"
        if begin not in text or end not in text[text.find(begin) :]:
            return (
                f"--write-docs: {page} has no generated {name.lower()} block (the lines"
                f" '.. BEGIN GENERATED {name}' and '.. END GENERATED {name}'); is it the life-cycle page?"
            )
    return None


def _write_lifecycle_docs(page: pathlib.Path) -> list[pathlib.Path]:
    """Rewrite the generated blocks of *page* and its diagram's SVG; returns the files written."""
    text = page.read_text()
    blocks = {
        "DIAGRAM": (
            f".. image:: {LIFECYCLE_SVG}\n"
            "   :alt: the lease life cycle as a state diagram; the table below lists every transition\n"
            "   :width: 100%\n"
        ),
        "TABLE": _lifecycle.render_table() + "\n",
    }
    for name, body in blocks.items():
        begin, end = f".. BEGIN GENERATED {name}\n", f".. END GENERATED {name}"
        start = text.index(begin) + len(begin)
        text = text[:start] + "\n" + body + "\n" + text[text.index(end, start) :]
    svg = page.parent / LIFECYCLE_SVG
    svg.parent.mkdir(exist_ok=True)
    svg.write_text(_lifecycle.render_svg())
    page.write_text(text)
    return [page, svg]


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m trio_zc", description=__doc__, one_line_errors=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench,lifecycle}")
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
        "bench",
        one_line_errors=True,
        help="measure how fast each way of sending large buffers is, on loopback (see docs/benchmarks)",
        description=_bench_cli.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _bench_cli.add_arguments(bench)
    life = sub.add_parser(
        "lifecycle", one_line_errors=True, help="print the lease life cycle (Mermaid and table)"
    )
    life.add_argument(
        "--write-docs",
        metavar="PAGE",
        nargs="?",
        const="docs/lifecycle.rst",
        help=f"rewrite the generated blocks of PAGE (default docs/lifecycle.rst) and the diagram's picture,"
        f" {LIFECYCLE_SVG} beside it",
    )
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        subcommand = {"demo": demo, "bench": bench, "lifecycle": life}[args.command]
        subcommand.error(f"unrecognized arguments: {' '.join(unknown)}")

    if args.command == "lifecycle":
        if args.write_docs:
            problem = _lifecycle_docs_problem(pathlib.Path(args.write_docs))
            if problem:
                life.error(problem)
            for written in _write_lifecycle_docs(pathlib.Path(args.write_docs)):
                print(f"wrote {written}")
        else:
            print(_lifecycle.render_mermaid())
            print()
            print(_lifecycle.render_table())
        return 0

    if args.command == "bench":
        problem = _bench_cli.check(args)
        if problem:
            bench.error(problem)
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
