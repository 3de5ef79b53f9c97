"""Headers an application gives: the same rules and messages in trio_zc.http and trio_zc.asgi."""

from __future__ import annotations

from typing import Any

import pytest

import trio_zc
import trio_zc.asgi
import trio_zc.http

from ..streams import pattern, sealed_with

BAD: list[tuple[Any, type[Exception], str]] = [
    ("x: y", TypeError, "headers must be a mapping or pairs of (name, value) strings"),
    ([("X-A", "1", "2")], TypeError, "headers must be (name, value) pairs of strings, not ('X-A', '1', '2')"),
    ([b"X-A"], TypeError, "headers must be (name, value) pairs of strings"),
    ({b"X-A": "1"}, TypeError, "the name of a header must be a str, not bytes"),
    ({7: "1"}, TypeError, "the name of a header must be a str, not int"),
    ({"bad name": "1"}, ValueError, "'bad name' is not a valid header name"),
    ({"X-A": b"1"}, TypeError, "the value of header X-A must be a str, not bytes"),
    ({"X-A": " 1"}, ValueError, "the value of header X-A ' 1' is not a valid header value"),
    ({"X-A": "1\r\nSet-Cookie: a=b"}, ValueError, "is not a valid header value"),
    ({"Content-Length": "5"}, ValueError, "cannot set the Content-Length header"),
]


@pytest.mark.parametrize(("headers", "error", "message"), BAD)
async def test_both_layers_refuse_the_same_headers_with_the_same_message(
    headers: Any, error: type[Exception], message: str
) -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        sealed = await sealed_with(pool, pattern(1000, 3))
        with pytest.raises(error) as http_error:
            trio_zc.http.Response(sealed, headers=headers)
        with pytest.raises(error) as asgi_error:
            trio_zc.asgi.LeaseResponse(sealed, headers=headers)
        # The same words, but for who refuses a header it sets itself.
        assert message in str(http_error.value)
        assert message in str(asgi_error.value)
        assert str(http_error.value).replace("a Response ", "a LeaseResponse ").replace(
            "the server ", "the response "
        ) == str(asgi_error.value)
        # Nothing was taken: the lease is still its owner's.
        assert sealed.view().tobytes() == pattern(1000, 3)
        sealed.release()


async def test_good_headers_pass_both_layers_as_given() -> None:
    async with trio_zc.open_pool(max_bytes=1 << 20, kernel="copy") as pool:
        sealed = await sealed_with(pool, pattern(1000, 3))
        headers = {"Cache-Control": "max-age=60, public", "X-Empty": "", "X-Tab": "a\tb"}
        assert trio_zc.http.Response(sealed, headers=headers).headers == tuple(headers.items())
        response = trio_zc.asgi.LeaseResponse(sealed, headers=list(headers.items()))
        assert response.headers == tuple((k.lower().encode(), v.encode()) for k, v in headers.items())
        sealed.release()
