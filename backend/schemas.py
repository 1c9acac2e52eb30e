"""Field types shared by the request schemas of every domain."""

from typing import Annotated

from fastapi import Path
from pydantic import AfterValidator, Field

MAX_ID = 2**31 - 1  # PostgreSQL integer keys; a larger id would be a 500 from the driver, not a 404


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it at the door instead of failing in the driver.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
DbId = Annotated[int, Field(ge=1, le=MAX_ID)]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
