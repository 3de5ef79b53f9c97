"""Range requests and conditional requests (RFC 9110, sections 13 and 14), as pure functions.

Everything here reads header values a client sent, so everything here
assumes an attacker wrote them: numbers of any length, empty lists, stray
spaces, dates that are not dates. Nothing raises on a client's input: what
cannot be understood is ignored, as the RFC allows, and the full
representation is served.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import enum
import re

#: Digits past this many (after leading zeros) make a position larger than any body.
_MAX_DIGITS = 18
_HUGE: int = 10**_MAX_DIGITS


class RangeAnswer(enum.Enum):
    """What to do with a Range header other than serving one range of it."""

    #: Serve the full representation (no Range, an invalid one, several ranges, another unit).
    FULL = "full"
    #: 416, with ``Content-Range: bytes */N``.
    UNSATISFIABLE = "unsatisfiable"


def _digits(text: str) -> str | None:
    """*text* as ASCII decimal digits without leading zeros, or None if it is not a number."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    return text.lstrip("0") or "0"


def _value(digits: str) -> int:
    """The number *digits* says; an absurdly long one comes back as a number larger than any body."""
    if len(digits) > _MAX_DIGITS:
        # int() of thousands of digits is slow, and refused past 4300 of them
        # (sys.set_int_max_str_digits): no body is this large anyway.
        return _HUGE
    return int(digits)


def _less(a: str, b: str) -> bool:
    """Whether the number *a* is less than the number *b* (both from _digits), at any length."""
    return (len(a), a) < (len(b), b)


def single_range(value: str, size: int) -> tuple[int, int] | RangeAnswer:
    """The one byte range ``(start, stop)`` a ``Range`` value asks of *size* bytes, or what to do instead.

    ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n`` (the last *n* bytes) are
    served; a range that starts past the end, or the last 0 bytes, or any
    range of an empty body, is unsatisfiable (416); a syntactically invalid
    value (``bytes=5-2``, ``bytes=x``, another unit) is ignored, as are
    several ranges at once (the full body answers them).
    """
    unit, equals, ranges = value.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return RangeAnswer.FULL
    specs = [spec.strip() for spec in ranges.split(",")]
    specs = [spec for spec in specs if spec]
    if len(specs) != 1:
        return RangeAnswer.FULL
    first, dash, last = specs[0].partition("-")
    if not dash:
        return RangeAnswer.FULL
    if not first:
        suffix = _digits(last)
        if suffix is None:
            return RangeAnswer.FULL
        if suffix == "0" or size == 0:
            return RangeAnswer.UNSATISFIABLE
        return max(0, size - _value(suffix)), size
    start_digits = _digits(first)
    if start_digits is None:
        return RangeAnswer.FULL
    end = _HUGE
    if last:
        end_digits = _digits(last)
        if end_digits is None or _less(end_digits, start_digits):
            return RangeAnswer.FULL
        end = _value(end_digits)
    start = _value(start_digits)
    if start >= size:
        return RangeAnswer.UNSATISFIABLE
    return start, min(end, size - 1) + 1


# -- entity tags ----------------------------------------------------------------------

#: What may stand between the quotes of an entity tag (etagc, ASCII only).
_ETAGC = re.compile(r'[\x21\x23-\x7e]*')
#: One member of an entity-tag list, with the spaces and commas before it
#: (RFC 9110, 5.6.1: empty members are allowed and ignored).
_LIST_ITEM = re.compile(r'[ \t,]*(?:(W/)?"([\x21\x23-\x7e]*)"|(\*))[ \t]*(?:,|$)')
_EMPTY_TAIL = re.compile(r"[ \t,]*")


def normalize_etag(value: str) -> str:
    """*value* as an entity tag: ``"abc"`` and ``W/"abc"`` are kept, a bare ``abc`` is quoted.

    Raises ValueError for characters an entity tag cannot hold (quotes
    inside, spaces, control characters, non-ASCII).
    """
    if not isinstance(value, str):
        raise TypeError(f"etag must be a str, not {type(value).__name__}")
    weak = value.startswith("W/")
    opaque = value[2:] if weak else value
    if len(opaque) >= 2 and opaque.startswith('"') and opaque.endswith('"'):
        opaque = opaque[1:-1]
    elif weak:
        raise ValueError(f"a weak etag is W/ and a quoted string, not {value!r}")
    if not _ETAGC.fullmatch(opaque):
        raise ValueError(
            f"etag {value!r} holds characters an entity tag cannot (quotes, spaces, controls, non-ASCII)"
        )
    return f'{"W/" if weak else ""}"{opaque}"'


def _split_etag(tag: str) -> tuple[bool, str]:
    """(weak, opaque) of a normalized entity tag."""
    if tag.startswith("W/"):
        return True, tag[3:-1]
    return False, tag[1:-1]


def parse_etag_list(value: str) -> list[tuple[bool, str]] | None:
    """``If-None-Match``'s entity tags as ``(weak, opaque)``; ``[(False, "*")]`` for ``*``; None if malformed."""
    items: list[tuple[bool, str]] = []
    position = 0
    star = False
    while position < len(value):
        if _EMPTY_TAIL.fullmatch(value, position):
            break
        found = _LIST_ITEM.match(value, position)
        if found is None or found.end() == position:
            return None
        position = found.end()
        if found[3]:
            star = True
        else:
            items.append((bool(found[1]), found[2]))
    if star:
        return [(False, "*")] if not items else None  # "*" stands alone
    return items


def none_match(if_none_match: str, etag: str | None) -> bool:
    """Whether ``If-None-Match: if_none_match`` matches *etag* (weak comparison): then 304.

    ``*`` matches any representation that exists; a malformed value matches nothing.
    """
    tags = parse_etag_list(if_none_match)
    if not tags:
        return False
    if tags == [(False, "*")]:
        return True
    if etag is None:
        return False
    _, ours = _split_etag(etag)
    return any(opaque == ours for _, opaque in tags)


# -- dates ------------------------------------------------------------------------------


def http_date(when: _dt.datetime) -> str:
    """*when* (aware) as an IMF-fixdate: ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    return email.utils.format_datetime(when.astimezone(_dt.timezone.utc), usegmt=True)


def parse_http_date(value: str) -> _dt.datetime | None:
    """An HTTP-date (any of the three formats) as an aware datetime, or None if it is not one."""
    if len(value) > 64:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:  # pragma: no cover - older Pythons returned None
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.timezone.utc)
    return parsed


def not_modified_since(if_modified_since: str, last_modified: _dt.datetime | None) -> bool:
    """Whether ``If-Modified-Since`` says the client's copy is current: then 304.

    Ignored (False) without a Last-Modified, or when the value is not a date.
    """
    if last_modified is None:
        return False
    since = parse_http_date(if_modified_since)
    return since is not None and last_modified <= since


def if_range_holds(if_range: str, etag: str | None, last_modified: _dt.datetime | None) -> bool:
    """Whether ``If-Range`` lets a Range apply: the client's validator is the current one.

    An entity tag must match strongly (weak tags never do); a date must
    equal Last-Modified exactly. Anything else means: serve the full body.
    """
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        if etag is None or value.startswith("W/"):
            return False
        weak, ours = _split_etag(etag)
        return not weak and value == f'"{ours}"'
    date = parse_http_date(value)
    return date is not None and last_modified is not None and date == last_modified
