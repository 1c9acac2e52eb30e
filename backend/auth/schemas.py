from datetime import datetime

from pydantic import BaseModel, Field, field_validator

from backend.schemas import Text


class LoginRequest(BaseModel):
    email: Text = Field(max_length=320)
    password: Text = Field(max_length=1000)


class UserRead(BaseModel):
    id: int
    email: str
    is_admin: bool


class TokenCreate(BaseModel):
    name: Text = Field(min_length=1, max_length=200, description="what the token is for, e.g. 'laptop script'")
    expires_in_days: int | None = Field(None, ge=1, le=3650, description="valid for this many days")
    expires_at: datetime | None = Field(None, description="valid until then (UTC when no offset is given)")

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class TokenRead(BaseModel):
    """An API token as listed: never its secret (only its hash is stored)."""

    id: int
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    expired: bool


class TokenCreated(TokenRead):
    token: str = Field(description="the secret: shown this once, send it as 'Authorization: Bearer <token>'")


class TokenList(BaseModel):
    items: list[TokenRead]


class UserAdminRead(UserRead):
    created_at: datetime
    disabled_at: datetime | None
    api_tokens: int


class UserList(BaseModel):
    items: list[UserAdminRead]
