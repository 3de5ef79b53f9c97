"""Response headers an application gives: checked once, for trio_zc.http and trio_zc.asgi alike.

Both layers take headers as a mapping or ``(name, value)`` string pairs
and refuse, with the same messages, what a server could not send as given:
names that are not RFC 9110 tokens, values with control characters or
surrounding spaces (what h11 refuses before sending), and the headers the
layer writes itself (each layer names its own, with the reason).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Union

#: A header name (RFC 9110 token) and value (visible ASCII, inner spaces and tabs).
HEADER_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
HEADER_VALUE = re.compile(r"(?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?")

#: What an application may pass as headers.
Headers = Union[Mapping[str, str], Iterable[tuple[str, str]]]


def check_header_value(what: str, value: object) -> str:
    """*value* if it can be sent as a header value, else TypeError or ValueError naming *what*."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not HEADER_VALUE.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a valid header value (ASCII, no control characters,"
            " no leading or trailing spaces)"
        )
    return value


def check_headers(headers: Headers, *, owner: str, reserved: Mapping[str, str]) -> list[tuple[str, str]]:
    """The pairs of *headers*, each checked; *reserved* maps the lowercase names *owner* sets itself to why."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    if isinstance(pairs, (str, bytes)):
        raise TypeError("headers must be a mapping or pairs of (name, value) strings")
    out = []
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"headers must be (name, value) pairs of strings, not {pair!r}")
        name, value = pair
        if not isinstance(name, str):
            raise TypeError(f"the name of a header must be a str, not {type(name).__name__}")
        if not HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid header name")
        reason = reserved.get(name.lower())
        if reason is not None:
            raise ValueError(f"a {owner} cannot set the {name} header: {reason}")
        out.append((name, check_header_value(f"the value of header {name}", value)))
    return out
