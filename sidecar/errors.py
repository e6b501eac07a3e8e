"""The error tree of forestreet-sidecar.

Foreign errors (requests, OSError, YAML) are translated at one boundary each and
re-raised as one of these, ``from`` the original::

    SidecarError
    ├── ConfigError(problems)          one "key: message" line each → exit 78
    ├── StartupError(message)          token directory not writable, port in use → exit 1
    └── RefreshError(reason, hint)     reason doubles as the metric label
        ├── TransientError(retry_after)   network, timeout, 5xx/429, retryable errorCodes,
        │   │                             internal_error (anything unforeseen, a shortage)
        │   ├── InvalidResponseError      bad JSON, missing field, bad pattern, bad expiresIn
        │   └── WriteError                the sink failed; the old token is intact
        ├── CredentialError               slow lane; hint: check the key
        └── EndpointError                 slow lane; hint: check api.base_url

Outside the tree, ``Interrupted`` is how a stop signal aborts the main thread's
request: a BaseException, so no ``except Exception`` on the way can swallow it.

No message here ever carries the API key or a token.
"""

from __future__ import annotations

from typing import ClassVar

from sidecar.error_codes import Lane, lane_for


class Interrupted(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT to abort what it is doing."""


class SidecarError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(SidecarError):
    """The configuration is unusable; ``problems`` holds one ``key: message`` line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StartupError(SidecarError):
    """The daemon cannot start: a path or an address is unusable."""


class RefreshError(SidecarError):
    """One refresh attempt failed. ``reason`` is the bounded metric label.

    ``lane`` says how it is retried; ``error_code`` is the published errorCode behind
    it, or None when the reason is not one (``timeout``, ``http_503``, ...).
    """

    lane: ClassVar[Lane] = Lane.RETRYABLE

    def __init__(self, reason: str, message: str, *, hint: str = "", status: int | None = None):
        self.reason = reason
        self.error_code = reason if lane_for(reason) is not None else None
        self.hint = hint
        self.status = status
        super().__init__(message)


class TransientError(RefreshError):
    """Worth retrying soon; ``retry_after`` (seconds) is the server's lower bound."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        retry_after: float | None = None,
        hint: str = "",
        status: int | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(reason, message, hint=hint, status=status)


class InvalidResponseError(TransientError):
    """A 200 answer that cannot be used; nothing is written."""

    def __init__(self, message: str, *, status: int | None = 200) -> None:
        super().__init__("invalid_response", message, status=status)


class WriteError(TransientError):
    """Writing the token failed; the previous token is untouched."""

    def __init__(self, message: str) -> None:
        super().__init__("write_error", message)


class CredentialError(RefreshError):
    """The API key was refused; retrying fast cannot help."""

    lane = Lane.CREDENTIAL


class EndpointError(RefreshError):
    """The request itself is wrong (path, method, version); retrying fast cannot help."""

    lane = Lane.REQUEST
