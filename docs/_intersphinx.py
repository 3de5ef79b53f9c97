"""Intersphinx inventories for the other projects' names these docs use, made offline.

The documentation is built where no documentation site can be reached, so
Sphinx cannot download Trio's or Python's ``objects.inv``. Instead this
module lists the names the docs refer to, with the public page each is
documented on, and :func:`write_inventories` writes a small inventory per
project (the format Sphinx's own ``objects.inv`` files have) for
``sphinx.ext.intersphinx`` to read from disk. The links in the built pages
point at the projects' real documentation.

A name the docs use that is missing here makes ``sphinx -n -W`` fail (in
``make docs``), which says which one to add.
"""

from __future__ import annotations

import pathlib
import zlib

# project -> (base URL, version, {name: (domain:role, page#anchor or page)})
# An anchor of "" means the name itself (Sphinx's "$" in inventories).
PROJECTS: dict[str, tuple[str, str, dict[str, tuple[str, str]]]] = {
    "trio": (
        "https://trio.readthedocs.io/en/stable/",
        "0.32",
        {
            "trio": ("py:module", "reference-core.html#module-trio"),
            "trio.run": ("py:function", "reference-core.html#"),
            "trio.sleep": ("py:function", "reference-core.html#"),
            "trio.move_on_after": ("py:function", "reference-core.html#"),
            "trio.fail_after": ("py:function", "reference-core.html#"),
            "trio.open_nursery": ("py:function", "reference-core.html#"),
            "trio.Nursery": ("py:class", "reference-core.html#"),
            "trio.TaskStatus": ("py:class", "reference-core.html#"),
            "trio.CancelScope": ("py:class", "reference-core.html#"),
            "trio.Event": ("py:class", "reference-core.html#"),
            "trio.to_thread.run_sync": ("py:function", "reference-core.html#"),
            "trio.from_thread.run_sync": ("py:function", "reference-core.html#"),
            "trio.Cancelled": ("py:exception", "reference-core.html#"),
            "trio.TooSlowError": ("py:exception", "reference-core.html#"),
            "trio.WouldBlock": ("py:exception", "reference-core.html#"),
            "trio.EndOfChannel": ("py:exception", "reference-core.html#"),
            "trio.BusyResourceError": ("py:exception", "reference-core.html#"),
            "trio.ClosedResourceError": ("py:exception", "reference-core.html#"),
            "trio.BrokenResourceError": ("py:exception", "reference-core.html#"),
            "trio.abc.AsyncResource": ("py:class", "reference-io.html#"),
            "trio.abc.AsyncResource.aclose": ("py:method", "reference-io.html#"),
            "trio.abc.SendStream": ("py:class", "reference-io.html#"),
            "trio.abc.SendStream.send_all": ("py:method", "reference-io.html#"),
            "trio.abc.SendStream.wait_send_all_might_not_block": ("py:method", "reference-io.html#"),
            "trio.abc.ReceiveStream": ("py:class", "reference-io.html#"),
            "trio.abc.ReceiveStream.receive_some": ("py:method", "reference-io.html#"),
            "trio.abc.Stream": ("py:class", "reference-io.html#"),
            "trio.abc.HalfCloseableStream": ("py:class", "reference-io.html#"),
            "trio.abc.HalfCloseableStream.send_eof": ("py:method", "reference-io.html#"),
            "trio.abc.Listener": ("py:class", "reference-io.html#"),
            "trio.abc.Listener.accept": ("py:method", "reference-io.html#"),
            "trio.aclose_forcefully": ("py:function", "reference-io.html#"),
            "trio.StapledStream": ("py:class", "reference-io.html#"),
            "trio.open_tcp_stream": ("py:function", "reference-io.html#"),
            "trio.serve_tcp": ("py:function", "reference-io.html#"),
            "trio.serve_listeners": ("py:function", "reference-io.html#"),
            "trio.open_tcp_listeners": ("py:function", "reference-io.html#"),
            "trio.SocketStream": ("py:class", "reference-io.html#"),
            "trio.SocketStream.send_all": ("py:method", "reference-io.html#"),
            "trio.SocketListener": ("py:class", "reference-io.html#"),
            "trio.SSLStream": ("py:class", "reference-io.html#"),
            "trio.socket.SocketType": ("py:class", "reference-io.html#"),
            "trio.testing.MockClock": ("py:class", "reference-testing.html#"),
            "trio.testing.check_half_closeable_stream": ("py:function", "reference-testing.html#"),
            "trio.testing.memory_stream_pair": ("py:function", "reference-testing.html#"),
        },
    ),
    "python": (
        "https://docs.python.org/3/",
        "3",
        {
            "struct": ("py:module", "library/struct.html#module-struct"),
            "socket.socket": ("py:class", "library/socket.html#"),
            "os.sendfile": ("py:function", "library/os.html#"),
            "mmap.mmap": ("py:class", "library/mmap.html#"),
            "enum.Enum": ("py:class", "library/enum.html#"),
            "io.BytesIO": ("py:class", "library/io.html#"),
            "datetime.datetime": ("py:class", "library/datetime.html#"),
            "urllib.parse.unquote": ("py:function", "library/urllib.parse.html#"),
            "collections.abc.Hashable": ("py:class", "library/collections.abc.html#"),
            "collections.abc.Mapping": ("py:class", "library/collections.abc.html#"),
            "collections.abc.Iterable": ("py:class", "library/collections.abc.html#"),
            "collections.abc.Callable": ("py:class", "library/collections.abc.html#"),
            "collections.abc.Awaitable": ("py:class", "library/collections.abc.html#"),
            "collections.abc.AsyncIterator": ("py:class", "library/collections.abc.html#"),
            "collections.abc.Iterator": ("py:class", "library/collections.abc.html#"),
            "collections.abc.Sequence": ("py:class", "library/collections.abc.html#"),
            "contextlib.AbstractAsyncContextManager": ("py:class", "library/contextlib.html#"),
            "asyncio.loop.sock_sendall": ("py:method", "library/asyncio-eventloop.html#"),
            "asyncio.loop.sock_sendfile": ("py:method", "library/asyncio-eventloop.html#"),
            "memoryview": ("py:class", "library/stdtypes.html#"),
            "bytes": ("py:class", "library/stdtypes.html#"),
            "bytearray": ("py:class", "library/stdtypes.html#"),
            "int": ("py:class", "library/functions.html#"),
            "float": ("py:class", "library/functions.html#"),
            "str": ("py:class", "library/stdtypes.html#"),
            "bool": ("py:class", "library/functions.html#"),
            "tuple": ("py:class", "library/stdtypes.html#"),
            "list": ("py:class", "library/stdtypes.html#"),
            "dict": ("py:class", "library/stdtypes.html#"),
            "ExceptionGroup": ("py:exception", "library/exceptions.html#"),
            "BaseExceptionGroup": ("py:exception", "library/exceptions.html#"),
            "ValueError": ("py:exception", "library/exceptions.html#"),
            "TypeError": ("py:exception", "library/exceptions.html#"),
            "OSError": ("py:exception", "library/exceptions.html#"),
            "RuntimeError": ("py:exception", "library/exceptions.html#"),
            "AssertionError": ("py:exception", "library/exceptions.html#"),
            "KeyboardInterrupt": ("py:exception", "library/exceptions.html#"),
            "ResourceWarning": ("py:exception", "library/exceptions.html#"),
            "UserWarning": ("py:exception", "library/exceptions.html#"),
        },
    ),
    "numpy": (
        "https://numpy.org/doc/stable/",
        "2",
        {
            "numpy.ndarray": ("py:class", "reference/generated/numpy.ndarray.html#"),
            "numpy.typing.NDArray": ("py:class", "reference/typing.html#"),
            "numpy.typing.DTypeLike": ("py:class", "reference/typing.html#"),
        },
    ),
    "pillow": (
        "https://pillow.readthedocs.io/en/stable/",
        "12",
        {
            "PIL.Image.Image": ("py:class", "reference/Image.html#"),
            "PIL.Image.Image.save": ("py:method", "reference/Image.html#"),
            "PIL.Image.open": ("py:function", "reference/Image.html#"),
            "PIL.UnidentifiedImageError": ("py:exception", "PIL.html#"),
        },
    ),
}


def inventory_bytes(project: str) -> bytes:
    """*project*'s inventory in Sphinx's version-2 format."""
    _, version, names = PROJECTS[project]
    lines = []
    for name, (role, where) in sorted(names.items()):
        uri = where + "$" if where.endswith("#") else where
        lines.append(f"{name} {role} 1 {uri} -\n")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    return header.encode() + zlib.compress("".join(lines).encode(), 9)


def write_inventories(folder: pathlib.Path) -> dict[str, tuple[str, str]]:
    """Write every project's inventory into *folder*; returns ``intersphinx_mapping``."""
    folder.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for project, (url, _, _) in PROJECTS.items():
        path = folder / f"{project}.inv"
        data = inventory_bytes(project)
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        mapping[project] = (url, str(path))
    return mapping
