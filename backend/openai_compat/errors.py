"""Errors under /v1 in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with its status codes.

The rest of the app answers `{"detail": ...}`; the official SDK reads `error.message` and `error.param`. The
translation lives in the /v1 routes' own route class (`OpenAIRoute`), so the app-wide handlers stay as they are
for every other path.
"""

import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from backend.errors import DomainError
from backend.work.retry import transient

log = logging.getLogger(__name__)

# OpenAI's error types by status (what its API sends; the SDK picks its exception class by status alone).
TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}
# The official SDK retries a 5xx unless told not to: an answer that failed, or took too long, would only fail (or
# wait) again.
NO_RETRY = {"x-should-retry": "false"}
CODES = {401: "invalid_api_key", 404: "not_found"}


class ApiError(Exception):
    """An error raised by the /v1 translation itself (a parameter the studio's services never see)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.headers = message, status, param, code, headers


def error_body(message: str, *, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code or CODES.get(status)}}


def error_response(
    message: str,
    *,
    status: int,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, status=status, param=param, code=code), status, headers=headers)


# The tags pydantic puts in an error's location for the member of a union it tried ("literal['auto']", "float").
UNION_TAG = re.compile(
    r"^(literal\[.*\]|function-\w+\[.*\]|(constrained-|strict-)?(int|float|str|bool)|list\[.*\]|dict\[.*\])$"
)


def _param_of(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """`("body", "method", "dpo", "hyperparameters", "beta", "float")` → `method.dpo.hyperparameters.beta`."""
    param = ""
    for part in loc[1:]:  # the first part says where: body, query, path
        if isinstance(part, str) and UNION_TAG.match(part):
            continue
        param += f"[{part}]" if isinstance(part, int) else f".{part}" if param else str(part)
    return param or None


def validation_message(errors: list[Any]) -> tuple[str, str | None]:
    """(message, param) of a refused body: the first field at fault, with what each accepted form needed (a
    union such as "auto" or a number reports one error per form)."""
    param = _param_of(errors[0].get("loc", ()))
    needs = [str(e["msg"]) for e in errors if _param_of(e.get("loc", ())) == param]
    message = " or ".join(dict.fromkeys(needs))
    return (f"{param}: {message}" if param else message), param


def translate(exc: Exception) -> Response | None:
    """The OpenAI-shaped response for `exc`, or None for an error that is a bug (it stays a 500)."""
    if isinstance(exc, ApiError):
        return error_response(exc.message, status=exc.status, param=exc.param, code=exc.code, headers=exc.headers)
    if isinstance(exc, DomainError):
        # The studio's 422 (input that parses but makes no sense) is OpenAI's 400 naming the parameter.
        status = 400 if exc.status_code == 422 else exc.status_code
        field = exc.details.get("field")
        return error_response(exc.message, status=status, param=field, headers=exc.headers)
    if isinstance(exc, RequestValidationError):
        message, param = validation_message(list(exc.errors()))
        return error_response(message, status=400, param=param)
    if isinstance(exc, HTTPException):
        return error_response(str(exc.detail), status=exc.status_code)
    if isinstance(exc, DBAPIError) and transient(exc):
        log.warning("database unreachable: %s", exc)
        message = "the database is unreachable; try again in a moment"
        return error_response(message, status=503, headers={"Retry-After": "5"})
    return None


class OpenAIRoute(APIRoute):
    """A route whose errors (its dependencies' included: a missing token, a bad body) come out in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def translated(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                response = translate(exc)
                if response is None:
                    raise
                return response

        return translated
