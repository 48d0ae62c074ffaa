"""`/v1/auth`: sign up, log in, who am I."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from api.core.security import create_access_token, hash_password, verify_password
from api.deps import CurrentUser, SessionDep, SettingsDep
from api.models import User
from api.schemas.auth import LoginRequest, SignupRequest, SignupResponse, Token, UserPublic
from api.schemas.common import ErrorResponse

router = APIRouter(prefix="/auth", tags=["auth"])

_EXISTS = "A user with this username or email already exists"


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=SignupResponse,
    responses={400: {"model": ErrorResponse, "description": "User already exists or invalid input"}},
    openapi_extra={"x-validation-status": 400},
    summary="Register a new user account",
)
def signup(body: SignupRequest, session: SessionDep) -> SignupResponse:
    email = body.email.lower()
    taken = session.scalar(
        select(User.id).where(or_(func.lower(User.username) == body.username.lower(), User.email == email))
    )
    if taken:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=_EXISTS)
    session.add(User(username=body.username, email=email, hashed_password=hash_password(body.password)))
    try:
        session.commit()
    except IntegrityError:  # a concurrent signup won the race
        session.rollback()
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=_EXISTS) from None
    return SignupResponse(message="User registered successfully")


@router.post(
    "/login",
    response_model=Token,
    responses={401: {"model": ErrorResponse, "description": "Invalid credentials"}},
    summary="Log in and get a bearer access token",
)
def login(body: LoginRequest, session: SessionDep, settings: SettingsDep) -> Token:
    user = session.scalar(select(User).where(func.lower(User.username) == body.username.lower()))
    if not verify_password(body.password, user.hashed_password if user else None) or user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="Incorrect username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Token(access_token=create_access_token(user.id, settings), token_type="bearer")


@router.get(
    "/me",
    response_model=UserPublic,
    responses={401: {"model": ErrorResponse}},
    summary="The authenticated user",
)
def me(user: CurrentUser) -> User:
    return user
