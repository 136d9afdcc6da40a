"""The fast lane of the small requests: an ASGI middleware that answers ``POST /v1/predict`` and
``POST /upload`` directly, without FastAPI's request and response objects, routing, dependency
and form-parsing machinery.

A 5-row request costs the model a tenth of a millisecond, and the framework around it several
times that (measured in process on the app: 0.53 ms per 5-row /v1/predict through FastAPI, 0.39
ms through the lane, of which ~0.2 ms read the JSON and score it). The lane takes bodies of up to
``max_body_bytes`` announced by Content-Length (the small requests, scored on the event loop);
larger or chunked bodies, and any request a lane handler does not take as it is (an upload with
several parts or an unusual query, say), go to the FastAPI routes, with the body replayed. The
lane sits inside the metrics and body-limit middlewares (so both still count and cap every
request) and calls the same answer functions as the routes, which stay for the OpenAPI schema
(``/docs``); the answers, status codes and error bodies are the same (tests/serve/test_fastlane.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

from . import codec
from .limits import BodyTooLarge, ClientError, _send_json

_log = logging.getLogger("ctrlab.serve")

#: (body, the ASGI scope, seconds when the request started, seconds when its body was read) ->
#: the JSON answer, or None: not taken here (the request goes on to the app's route)
Handler = Callable[[bytes, dict, float, float], Awaitable[Any]]


class FastLane:
    """ASGI middleware: small ``POST`` bodies to the paths of ``handlers`` answered by them;
    everything else goes to ``app``."""

    def __init__(self, app, handlers: dict[str, Handler], max_body_bytes: int):
        self.app = app
        self.handlers = handlers
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        handler = self.handlers.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None or not self._small(scope["headers"]):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            chunks = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            result = await handler(body, scope, started, time.perf_counter())
        except ClientError as exc:
            await _send_json(send, exc.status_code, str(exc.detail))
            return
        except BodyTooLarge as exc:
            await _send_json(send, 413, f"{exc}; send fewer rows per request")
            return
        except Exception as exc:  # logged; the answer shows no internals (as the app's handler)
            _log.error("POST %s failed", scope["path"], exc_info=exc)
            await _send_json(send, 500, f"internal error ({type(exc).__name__}); the server log has the details")
            return
        if result is None:  # the route's case: the app reads the same body
            await self.app(scope, _replay(body, receive), send)
            return
        data = codec.dumps(result)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(data)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})

    def _small(self, headers) -> bool:
        """A body announced (Content-Length) at most ``max_body_bytes`` long: the small requests
        the lane is for. Larger or chunked bodies take the app's route, where the framework's cost
        is small beside the work and large bodies are handled as they always were."""
        for name, value in headers:
            if name == b"content-length":
                return value.isdigit() and int(value) <= self.max_body_bytes
        return False


def _replay(body: bytes, receive):
    """An ASGI ``receive`` that gives ``body`` once, then defers to ``receive`` (a disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# --------------------------------------------------------------------------------------------
# what /upload takes in the lane: one file part, a plain query
# --------------------------------------------------------------------------------------------

def single_file_part(body: bytes, headers) -> bytes | None:
    """The content of the one file part of a ``multipart/form-data`` body, or None for anything
    else (no or other content type, several parts, a part that is not a file, a boundary that also
    occurs in the content): those take the route's full form parser."""
    content_type = next((v for k, v in headers if k == b"content-type"), b"").decode("latin-1")
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    boundary = ""
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        return None
    parts = body.split(b"--" + boundary.encode("latin-1"))
    # b"" (preamble), the part, then "--" closing (and an optional line end)
    if len(parts) != 3 or parts[0] != b"" or parts[2].rstrip(b"\r\n") != b"--":
        return None
    part = parts[1]
    if not (part.startswith(b"\r\n") and part.endswith(b"\r\n")):
        return None
    head, sep, content = part[2:-2].partition(b"\r\n\r\n")
    if not sep:
        return None
    disposition = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-disposition:")]
    if len(disposition) != 1 or b"form-data" not in disposition[0] or b"filename=" not in disposition[0]:
        return None
    if any(line.lower().startswith(b"content-transfer-encoding:") for line in head.split(b"\r\n")):
        return None
    return content


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def upload_query(scope) -> tuple[str, bool] | None:
    """(user_id, debug) from a plain query string, or None for anything the route should read
    (other keys, repeated keys, a debug value that is not a plain boolean, non-ASCII bytes)."""
    raw = scope.get("query_string", b"")
    if not raw.isascii():
        return None
    pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True)
    found = dict(pairs)
    if len(found) != len(pairs) or not set(found) <= {"user_id", "debug"}:
        return None
    debug = found.get("debug", "false").lower()
    if debug not in _TRUE | _FALSE:
        return None
    return found.get("user_id", ""), debug in _TRUE
