"""A local stand-in of the Forestreet auth API, with failure injection.

It answers ``GET /v2/auth/session`` the way the published OpenAPI document describes: any
non-empty ``x-api-key`` gets a 200 session with JWT-shaped tokens, a missing or blank key gets
401 ``UNAUTHORISED``. Everything the real API can do wrong can be scripted: an ``errorCode``
with any status, ``Retry-After``, a raw body, a slow or trickled answer, a reset connection, a
redirect, odd lifetimes and fields.

In-process tests use :class:`FakeApi` directly (``script()``, ``requests``, ``issued``). A
sidecar running as a subprocess against a ``fake-api`` subprocess is scripted over HTTP:

- ``POST /_fake/script``: a JSON list of answers (the keys of :meth:`Answer.from_json`) → 204
- ``POST /_fake/reset``: forget the script → 204
- ``GET /_fake/stats``: ``{"requests", "sessionRequests", "issued", "lastToken"}``

Only the standard library is used, so the fake starts anywhere the sidecar does. The codes
and their default statuses come from :mod:`sidecar.error_codes`. Its modules:

- ``answers``: :class:`Answer`, its JSON form, :class:`Recorded`
- ``bodies``: session tokens, JSON numbers and error bodies as they go on the wire
- ``handler``: the threading HTTP server and the request handler
- ``server``: :class:`FakeApi`, its lifecycle, script, state and control routes
- ``cli``: the ``fake-api`` command
"""

from __future__ import annotations

from sidecar.error_codes import ERROR_CODES
from sidecar.fake_api.answers import Answer, Recorded, default_status
from sidecar.fake_api.cli import add_arguments, run
from sidecar.fake_api.handler import SESSION_PATH
from sidecar.fake_api.server import FakeApi

__all__ = [
    "ERROR_CODES",
    "SESSION_PATH",
    "Answer",
    "FakeApi",
    "Recorded",
    "add_arguments",
    "default_status",
    "run",
]
