"""The few exceptions a caller handles differently from any other failure."""

from __future__ import annotations


class ConfigError(Exception):
    """A config file that cannot become a :class:`~proxy.settings.Settings`.

    ``problems`` holds one line per problem, each naming the field path and
    the reason, so the CLI can print them all at once.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class BodyTooLargeError(Exception):
    """A request body grew past the route's limit while being streamed."""

    def __init__(self, limit: int, prefix: bytes = b"") -> None:
        self.limit = limit
        self.prefix = prefix  # what was read before the limit was passed
        super().__init__(f"request body exceeds {limit} bytes")


class UpstreamError(Exception):
    """A backend exchange failed; ``proxy.upstream.failure_of`` tells the kinds apart."""


class ConnectError(UpstreamError):
    """The TCP (or TLS) connection to the backend could not be made."""

    def __init__(self, os_error: OSError) -> None:
        self.os_error = os_error
        super().__init__(f"cannot connect: {os_error}")


class ConnectTimeoutError(UpstreamError):
    """Connecting took longer than the backend's connect timeout."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"connect timed out after {timeout:g}s")


class DisconnectedError(UpstreamError):
    """The backend closed the connection before its answer ended."""


class InvalidResponseError(UpstreamError):
    """The backend's bytes are not a valid HTTP/1.1 response."""


class CoordinationError(Exception):
    """The fleet's shared state (Redis) could not be read or written: the replica
    keeps the split it has, and an admin write is refused with 503."""

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation  # read, write, lease, subscribe: a metric label
        super().__init__(reason)


class AnalysisError(Exception):
    """The gates' evidence could not be measured (a metrics query failed): the rollout
    holds, and enough of these in a row count as a failed interval."""
