"""Domain errors raised by services; the app maps them to HTTP statuses in one place (main.py)."""

from typing import Any


class DomainError(Exception):
    status_code = 400
    headers: dict[str, str] | None = None  # response headers that go with it (Retry-After on a 429)

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    status_code = 409


class Invalid(DomainError):
    """Input that parses but makes no sense; `field` names the culprit."""

    status_code = 422


class Unsupported(DomainError):
    status_code = 415


class TooLarge(DomainError):
    status_code = 413


class Unavailable(DomainError):
    """A service the studio needs (the database) cannot be reached right now; retrying later will work."""

    status_code = 503


class Unauthorized(DomainError):
    status_code = 401


class Forbidden(DomainError):
    status_code = 403
