from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, EmailStr, Field

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,63}$"
#: 12: MLflow's minimum, so that the user's MLflow account shares the password (api/clients/mlflow_accounts.py)
PASSWORD_MIN_LENGTH = 12


class SignupRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"username": "alice", "email": "alice@example.com", "password": "correct horse battery"}]}
    )

    username: str = Field(
        pattern=USERNAME_PATTERN,
        description="3 to 64 characters: letters, digits, `_`, `.`, `-`; starts with a letter or digit.",
    )
    email: EmailStr
    password: str = Field(min_length=PASSWORD_MIN_LENGTH, max_length=256, description=f"At least {PASSWORD_MIN_LENGTH} characters.")


class LoginRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"username": "alice", "password": "correct horse battery"}]})

    username: str = Field(max_length=320)
    password: str = Field(max_length=256)


class Token(BaseModel):
    access_token: str
    token_type: str = Field(default="bearer", examples=["bearer"])


class SignupResponse(BaseModel):
    message: str = Field(examples=["User registered successfully"])


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    username: str
    email: str
    created_at: datetime
