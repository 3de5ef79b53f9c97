"""Serving sealed leases over HTTP/1.1, with h11 as the protocol library.

A handler answers each request with a :class:`Response` holding a sealed
lease (or a slice of one, or a hold on a cached lease, or small bytes);
the server does the rest of HTTP/1.1 -- keep-alive and pipelining, HEAD,
range requests, conditional requests, errors, timeouts for idle and slow
clients -- and sends the lease's bytes without copying them, with
:meth:`trio_zc.ZeroCopyStream.send_lease`::

    async def handler(request: trio_zc.http.Request) -> trio_zc.http.Response:
        held = await cache.get(request.path, render)
        return trio_zc.http.Response(held, content_type="image/jpeg")

    await trio_zc.http.serve(pool, handler, port=8080)

Needs h11 (the ``http`` extra). The documentation's "Serving images over HTTP"
page says what the server does and how to bound its clients.
"""

try:
    import h11 as _h11  # noqa: F401
except ImportError as _exc:  # pragma: no cover - the extra is installed in development
    raise ImportError(
        "trio_zc.http needs h11: pip install 'trio_zc[http]' (or pip install h11)"
    ) from _exc

from ._messages import Body as Body
from ._messages import Request as Request
from ._messages import Response as Response
from ._server import DEFAULT_HEADER_TIMEOUT as DEFAULT_HEADER_TIMEOUT
from ._server import DEFAULT_IDLE_TIMEOUT as DEFAULT_IDLE_TIMEOUT
from ._server import DEFAULT_LINGER_TIMEOUT as DEFAULT_LINGER_TIMEOUT
from ._server import DEFAULT_MAX_HEADER_BYTES as DEFAULT_MAX_HEADER_BYTES
from ._server import DEFAULT_SEND_TIMEOUT as DEFAULT_SEND_TIMEOUT
from ._server import Handler as Handler
from ._server import HTTPServer as HTTPServer
from ._server import HTTPStatistics as HTTPStatistics
from ._server import serve as serve

__all__ = [
    "Body",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LINGER_TIMEOUT",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_SEND_TIMEOUT",
    "HTTPServer",
    "HTTPStatistics",
    "Handler",
    "Request",
    "Response",
    "serve",
]

# Reprs, tracebacks and the reference show trio_zc.http.X.
from .._exports import publish as _publish  # noqa: E402

_publish(globals())
del _publish

from .._ki import protect_package as _protect_package  # noqa: E402

_protect_package(__name__)
del _protect_package
