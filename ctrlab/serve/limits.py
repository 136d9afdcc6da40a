"""Request-body limits of the HTTP server: the body cap (:class:`BodyLimitMiddleware`, before a
byte is parsed) and the JSON checks on the raw bytes before any parsing.

The cap: Content-Length is checked first (413 before reading), then the received bytes are
counted as the stream is read and reading stops (:class:`BodyTooLarge`, a 413) as soon as they
exceed it.

``json.loads`` builds every value of a body before anyone can count them: 11 million empty rows
(a 32 MiB body) cost about 1 GB of Python objects and seconds of CPU with the interpreter lock
held. :func:`decode_json` therefore scans the bytes first (numpy, in 1 MiB chunks, so the scan
needs a few MiB whatever the body size and releases the lock between its vector operations) and
refuses a body that nests deeper than ``max_depth``, holds more than ``max_items`` elements at the
rows level or more than ``max_values`` values, before parsing it. Every refusal is a
:class:`ClientError` (4xx) that says what is wrong and where.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import numpy as np
from starlette.exceptions import HTTPException

from . import codec

# A valid body nests 3 levels ({"rows": [row]}, a row being an object or a list of scalars); the
# margin keeps the messages about wrong values (a list where a string belongs) precise.
MAX_JSON_DEPTH = 32
# Bodies this small are parsed without the scan when they cannot nest too deep: parsing them is
# cheap whatever they hold (the rows are counted after parsing).
SMALL_BODY_BYTES = 16 << 10
SCAN_CHUNK_BYTES = 1 << 20
# large bodies are parsed this many bytes at a time (~5 ms each with the interpreter lock held;
# smaller pieces cost more calls and copies: a 1000-row body of ~0.6 MB is parsed whole)
PIECE_BYTES = 1 << 20
ROWS_DEPTH = 2  # {"rows": [ <- items at this depth are the rows

_QUOTE, _BACKSLASH, _COMMA, _OPEN, _CLOSE = ord('"'), ord("\\"), ord(","), ord("{"), ord("}")
# a \uD800-\uDFFF escape: the only way a JSON text (valid UTF-8) can carry a lone surrogate
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_TAIL = re.compile(rb"\][ \t\r\n]*\}[ \t\r\n]*\Z")


class ClientError(HTTPException):
    """A 4xx answer with a message for the client."""


class BodyTooLarge(Exception):
    """Raised while a body is read, once it exceeds ``limit`` bytes (the app answers 413)."""

    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"request body exceeds the limit of {limit:,} bytes")


class BodyLimitMiddleware:
    """ASGI middleware: 413 before reading when Content-Length exceeds the limit; otherwise the
    received bytes are counted and reading stops (BodyTooLarge -> 413) as soon as they exceed it."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                text = value.decode("latin-1").strip()
                if not text.isdigit():
                    await _send_json(send, 400, f"invalid Content-Length header {text[:40]!r}")
                    return
                if int(text) > self.limit:
                    await _send_json(send, 413, f"request body of {int(text):,} bytes exceeds the limit of "
                                                f"{self.limit:,} bytes (Content-Length); send fewer rows per request")
                    return
        received = 0
        limit = self.limit

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send, status: int, detail: str) -> None:
    """A JSON error answer sent straight through ASGI (the request never reaches the app)."""
    body = json.dumps({"detail": detail, "code": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def decode_json(body: bytes, *, expected: str, max_depth: int = MAX_JSON_DEPTH, max_items: int | None = None,
                max_values: int | None = None, items_name: str = "rows") -> Any:
    """The JSON value of a request body, refused with a 4xx :class:`ClientError` when the body is
    empty, not UTF-8, malformed, nested deeper than ``max_depth``, or (checked before parsing)
    holds more than ``max_items`` elements at the rows level or more than ``max_values`` values.
    ``expected``: the body's shape, for the messages (``{"rows": [...]}``).

    A large body ``{"<items_name>": [...]}`` is parsed in pieces of about ``PIECE_BYTES`` (whole
    rows each), so that no single parse holds the interpreter lock for long: the event loop
    (``/health``, small requests) keeps running while a worker thread parses."""
    if not body.strip():
        raise ClientError(400, f"empty request body; send JSON {expected}")
    cuts = None
    if len(body) > SMALL_BODY_BYTES or body.count(b"[") + body.count(b"{") > max_depth:
        cuts = scan_json(body, max_depth=max_depth, max_items=max_items, max_values=max_values,
                         items_name=items_name)
    if cuts is not None and len(body) > PIECE_BYTES:
        payload = _parse_in_pieces(body, cuts, items_name)  # (None: parsed whole below, for the error)
        if payload is not None:
            return payload
    try:
        return codec.loads(body)  # (never guesses UTF-16/32 from the first bytes: UTF-8 only)
    except UnicodeDecodeError as exc:
        raise ClientError(400, f"request body is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ClientError(400, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # (the scan refuses deeper bodies first; kept as a safety net)
        raise ClientError(400, f"JSON nested deeper than {max_depth} levels") from None
    except ValueError:  # an integer too long to convert (Python's limit on integer digits)
        raise ClientError(400, f"JSON number with more than {sys.get_int_max_str_digits():,} digits") from None


def _parse_in_pieces(body: bytes, cuts: np.ndarray, key: str) -> dict[str, list[Any]] | None:
    """``{key: [...]}`` parsed a few hundred KiB of items at a time, split at the item separators
    ``cuts`` (byte offsets of the commas at the rows level). None when the body has another shape
    or a piece does not parse: the caller parses it whole (for the value or the exact error)."""
    head = re.match(rb'[ \t\r\n]*\{[ \t\r\n]*"' + re.escape(key.encode()) + rb'"[ \t\r\n]*:[ \t\r\n]*\[', body)
    tail = _TAIL.search(body, max(0, len(body) - 1024))  # (a longer trailing space: parsed whole)
    if head is None or tail is None:
        return None
    first, last = head.end(), tail.start()
    cuts = cuts[(cuts > first) & (cuts < last)]
    # piece boundaries: the first separator after every PIECE_BYTES, plus both ends of the list
    bounds = np.unique(cuts[np.minimum(np.searchsorted(cuts, np.arange(first, last, PIECE_BYTES)), len(cuts) - 1)]) \
        if len(cuts) else np.zeros(0, dtype=np.int64)
    edges = [first - 1, *bounds.tolist(), last]  # each piece lies between two separators/brackets
    items: list[Any] = []
    try:
        for a, b in zip(edges, edges[1:]):
            piece = body[a + 1:b]
            if len(edges) > 2 and not piece.strip():  # "[1,,2]" or "[1,]": malformed, parsed whole
                return None
            items.extend(codec.loads(b"[" + piece + b"]"))
    except (ValueError, RecursionError):  # a malformed piece, not UTF-8, or the list holds another shape
        return None
    return {key: items}


def scan_json(body: bytes, *, max_depth: int, max_items: int | None = None, max_values: int | None = None,
              items_name: str = "rows") -> np.ndarray:
    """Check nesting depth, the elements at the rows level and the number of values of a JSON text
    from its raw bytes (strings and escapes understood), chunk by chunk; stops at the first
    chunk that breaks a limit. Raises :class:`ClientError`; says nothing about other syntax.
    Returns the byte offsets of the commas at the rows level (int64)."""
    depth = 0
    in_string = 0
    items = values = 0  # commas at the rows level / anywhere outside strings
    cuts: list[np.ndarray] = []
    start, size = 0, len(body)
    while start < size:
        end = min(size, start + SCAN_CHUNK_BYTES)
        while end < size and body[end - 1] == _BACKSLASH:  # never split an escape
            end += 1
        chunk = body[start:end]
        if b"\\" in chunk:  # an escaped backslash cannot escape what follows it
            chunk = chunk.replace(b"\\\\", b"__")
        a = np.frombuffer(chunk, dtype=np.uint8)
        quote = a == _QUOTE
        quote[1:] &= a[:-1] != _BACKSLASH
        quotes = np.flatnonzero(quote)
        lower = a | 0x20  # "[" -> "{", "]" -> "}"
        marks = np.flatnonzero((lower == _OPEN) | (lower == _CLOSE) | (a == _COMMA))
        # a mark is inside a string when an odd number of quotes (counting one left open) precede it
        marks = marks[(np.searchsorted(quotes, marks) + in_string) % 2 == 0]
        in_string = (len(quotes) + in_string) % 2
        kind = lower[marks]
        level = np.cumsum((kind == _OPEN).view(np.int8) - (kind == _CLOSE).view(np.int8), dtype=np.int32)
        level += depth
        if len(level) and int(level.max()) > max_depth:
            at = start + int(marks[np.argmax(level > max_depth)])
            raise ClientError(400, f"JSON nested deeper than {max_depth} levels (at byte {at})")
        if len(level) and int(level.min()) < 0:
            at = start + int(marks[np.argmax(level < 0)])
            raise ClientError(400, f"malformed JSON: unbalanced closing bracket at byte {at}")
        depth = int(level[-1]) if len(level) else depth
        comma = kind == _COMMA
        values += int(np.count_nonzero(comma))
        comma &= level == ROWS_DEPTH
        cuts.append(marks[comma] + start)
        items += len(cuts[-1])
        done = end == size
        if max_items is not None and items + 1 > max_items:
            raise too_many(f"{items + 1:,}" if done else f"more than {items:,}", max_items, items_name)
        if max_values is not None and values + 1 > max_values:
            per_item = f" ({max_items:,} {items_name} of {max_values // max_items} values)" if max_items else ""
            raise ClientError(413, f"the body holds more than {values:,} JSON values; the limit is "
                                   f"{max_values:,}{per_item}")
        start = end
    return np.concatenate(cuts) if cuts else np.zeros(0, dtype=np.int64)


def too_many(count: str, limit: int, items_name: str = "rows") -> ClientError:
    """The 413 for a request over its row limit (``count``: the number found, as text)."""
    return ClientError(413, f"{count} {items_name} exceed the limit of {limit:,} {items_name} per request")


def may_hold_surrogates(body: bytes) -> bool:
    """Whether a JSON body may decode to a string with a lone UTF-16 surrogate (which cannot be
    encoded as UTF-8): false for almost every body, so the decoded values need no check."""
    # (a one-byte search runs at memchr's speed: most bodies hold no backslash at all)
    return b"\\" in body and _SURROGATE_ESCAPE.search(body) is not None


def has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
