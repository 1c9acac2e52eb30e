from pydantic import BaseModel, Field

from backend.schemas import Text


class LoginRequest(BaseModel):
    email: Text = Field(max_length=320)
    password: Text = Field(max_length=1000)


class UserRead(BaseModel):
    id: int
    email: str
    is_admin: bool


class TokenCreate(BaseModel):
    name: Text = Field("", max_length=200)


class TokenRead(BaseModel):
    token: str
    name: str
