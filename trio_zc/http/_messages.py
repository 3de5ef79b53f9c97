"""Request and Response: what a handler receives and what it answers with."""

from __future__ import annotations

import datetime
from typing import Any, Union

import attrs

from .. import CachedLease, SealedLease
from .._headers import Headers, check_header_value, check_headers
from ._conditional import normalize_etag

#: Headers the server writes itself, from the response's fields or its own framing.
_SERVER_HEADERS = {
    "content-length": "the server sets it from the body",
    "content-range": "the server sets it for range requests",
    "accept-ranges": "the server sets it",
    "transfer-encoding": "the server frames bodies by length",
    "connection": "the server decides when a connection closes",
    "keep-alive": "the server decides when a connection closes",
    "upgrade": "the server speaks HTTP/1.1 only",
    "te": "it is a request header",
    "trailer": "the server sends no trailers",
    "proxy-connection": "it is not a response header",
    "date": "the server sets it",
    "content-type": "use Response(content_type=...)",
    "etag": "use Response(etag=...), which conditional requests then use",
    "last-modified": "use Response(last_modified=...), which conditional requests then use",
}

#: A response body: bytes (copied; for small pages), a sealed lease (sent
#: without copying, then released), or a hold on a cached lease (sent, then
#: the hold released).
Body = Union[bytes, SealedLease, CachedLease[Any]]


#: Header lists already validated, by their pairs: a handler passes the
#: same few headers with every response, and checking them is most of the
#: cost of making a Response. Only exact str pairs are kept (a subclass of
#: str could compare equal to a valid name and print as another).
_checked_headers: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
_CHECKED_MAX = 1024


def _convert_headers(headers: Headers) -> tuple[tuple[str, str], ...]:
    if type(headers) is dict or type(headers) is tuple:
        if not headers:
            return ()
        try:
            key = tuple(headers.items()) if type(headers) is dict else headers
            checked = _checked_headers.get(key)  # type: ignore[arg-type]
        except TypeError:  # unhashable pairs: checked (and refused) below
            checked = None
        if checked is not None:
            return checked
    result = _check_headers(headers)
    if all(type(name) is str and type(value) is str for name, value in result):
        if len(_checked_headers) >= _CHECKED_MAX:
            _checked_headers.clear()
        _checked_headers[result] = result
    return result


def _check_headers(headers: Headers) -> tuple[tuple[str, str], ...]:
    return tuple(check_headers(headers, owner="Response", reserved=_SERVER_HEADERS))


_normalized_etags: dict[str, str] = {}


def _convert_etag(etag: str | None) -> str | None:
    if etag is None:
        return None
    if type(etag) is str:
        normal = _normalized_etags.get(etag)
        if normal is None:
            normal = normalize_etag(etag)
            if len(_normalized_etags) >= _CHECKED_MAX:
                _normalized_etags.clear()
            _normalized_etags[etag] = normal
        return normal
    return normalize_etag(etag)


def _convert_last_modified(when: datetime.datetime | float | None) -> datetime.datetime | None:
    if when is None:
        return None
    if isinstance(when, datetime.datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("last_modified must be an aware datetime (with a time zone), or a POSIX timestamp")
        moment = when.astimezone(datetime.timezone.utc)
    elif isinstance(when, (int, float)) and not isinstance(when, bool):
        moment = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    else:
        raise TypeError(f"last_modified must be a datetime, a POSIX timestamp or None, not {type(when).__name__}")
    # HTTP dates have whole seconds: compare as the client will see it.
    return moment.replace(microsecond=0)


def _body_size(body: object) -> int:
    if type(body) is CachedLease:  # the common body of an image server: checked first
        return body.nbytes
    if isinstance(body, bytes):
        return len(body)
    if isinstance(body, SealedLease):
        return body.nbytes
    if isinstance(body, CachedLease):
        return body.nbytes
    raise TypeError(
        "a Response body is bytes, a SealedLease or a CachedLease,"
        f" not {type(body).__name__}"
        + (" (seal() it first)" if type(body).__name__ == "WritableLease" else "")
    )


@attrs.frozen
class Response:
    """What a handler answers: a status, headers, and a body sent without copying.

    ``Response(sealed, content_type="image/jpeg", etag="v1")`` answers with
    the bytes of a :class:`~trio_zc.SealedLease`; *offset* and *nbytes*
    select a slice of it. The server owns the body from then on: it
    releases a lease once the response is sent (or cannot be: the client
    left, the request was HEAD or conditional), and releases the hold of a
    :class:`~trio_zc.CachedLease` the same way. So a response with a lease
    is for one request; serve a lease to many clients from a
    :class:`~trio_zc.LeaseCache`. A :class:`bytes` body is copied, and suits
    small pages.

    The server answers ``Range``, ``If-None-Match`` and
    ``If-Modified-Since`` itself for a 200 response, from *etag* (an entity
    tag: ``"v1"``, ``W/"v1"``, or a bare ``v1``, which gets quoted) and
    *last_modified* (an aware :class:`~datetime.datetime` or a POSIX
    timestamp; HTTP keeps whole seconds). It writes Content-Length,
    Content-Range, Accept-Ranges, Connection and Date itself: *headers* may
    not hold those, nor Content-Type, ETag or Last-Modified (use the fields).

    Bad values raise :class:`ValueError` or :class:`TypeError` here, in the
    handler, rather than on the wire.
    """

    #: The body: bytes, a sealed lease, or a hold on a cached lease.
    body: Body = b""
    #: The status code, 200 to 599.
    status: int = attrs.field(default=200, kw_only=True)
    #: Extra headers, as (name, value) pairs (a mapping is accepted too).
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_convert_headers, kw_only=True)
    #: The Content-Type, if any.
    content_type: str | None = attrs.field(default=None, kw_only=True)
    #: The entity tag (quoted), if any: sent as ETag, compared with If-None-Match and If-Range.
    etag: str | None = attrs.field(default=None, converter=_convert_etag, kw_only=True)
    #: When the body last changed (UTC, whole seconds), if known.
    last_modified: datetime.datetime | None = attrs.field(
        default=None, converter=_convert_last_modified, kw_only=True
    )
    #: Where the body starts in *body*.
    offset: int = attrs.field(default=0, kw_only=True)
    #: How many bytes of *body* from *offset* (default: the rest).
    nbytes: int | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        status = self.status
        if type(status) is not int:
            raise TypeError(f"status must be an int, not {type(status).__name__}")
        if not 200 <= status <= 599:
            raise ValueError(f"status must be between 200 and 599, not {status}")
        if self.content_type is not None:
            check_header_value("content_type", self.content_type)
        size = _body_size(self.body)
        if type(self.offset) is not int or (self.nbytes is not None and type(self.nbytes) is not int):
            raise TypeError("offset and nbytes must be ints")
        if not 0 <= self.offset <= size:
            raise ValueError(f"offset {self.offset} is outside the body's {size} bytes")
        if self.nbytes is not None and not 0 <= self.nbytes <= size - self.offset:
            raise ValueError(f"nbytes {self.nbytes} at offset {self.offset} does not fit the body's {size} bytes")
        if status in (204, 304) and self.length:
            raise ValueError(f"a {status} response has no body")

    @property
    def length(self) -> int:
        """How many bytes the body sends (its slice)."""
        if self.nbytes is not None:
            return self.nbytes
        return _body_size(self.body) - self.offset


@attrs.frozen
class Request:
    """A request, as a handler sees it (only GET and HEAD reach handlers).

    Header names are lower case; values are as sent (Latin-1 decoded).
    *path* and *query* are the parts of the target before and after ``?``,
    not percent-decoded (:func:`urllib.parse.unquote` does that).
    """

    #: ``"GET"`` or ``"HEAD"``.
    method: str
    #: The request target as sent (``/image/1.jpg?size=small``, or an absolute URL).
    target: str
    #: The target's path (of an absolute URL too).
    path: str
    #: The target's query, without the ``?`` ("" if none).
    query: str
    #: Every header as ``(name, value)``, names in lower case, in the order sent.
    headers: tuple[tuple[str, str], ...]
    #: ``"1.1"`` or ``"1.0"``.
    http_version: str
    #: The client's address, as ``getpeername()`` gives it.
    peer: object = None

    def header(self, name: str) -> str | None:
        """The value of header *name* (any case); several are joined with ``", "``; None if absent."""
        name = name.lower()
        values = [value for key, value in self.headers if key == name]
        if not values:
            return None
        return ", ".join(values)
