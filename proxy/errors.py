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
