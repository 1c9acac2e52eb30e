from pydantic import BaseModel, Field


class LoginRequest(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1000)


class UserRead(BaseModel):
    id: int
    email: str
    is_admin: bool


class TokenCreate(BaseModel):
    name: str = Field("", max_length=200)


class TokenRead(BaseModel):
    token: str
    name: str
