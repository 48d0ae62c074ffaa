"""`/v1/auth`: sign up, log in, who am I."""

from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks, HTTPException, Request, status
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from api.core.security import create_access_token, hash_password, verify_password
from api.deps import CurrentUser, SessionDep, SettingsDep
from api.models import User
from api.schemas.auth import LoginRequest, SignupRequest, SignupResponse, Token, UserPublic
from api.services import mlflow_users
from api.routers.openapi_doc import UNAUTHORIZED, body_example, error, ok_example

router = APIRouter(prefix="/auth", tags=["auth"])

_EXISTS = "A user with this username or email already exists"
#: login and signup are rate-limited per client address and per username (api/core/limits.py)
_RATE_LIMITED = {429: error("Too many attempts from this address or for this username; `Retry-After` says when "
                            "to try again", "Too many failed logins for this username (10 per 60 s); retry in 42 s")}


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=SignupResponse,
    responses={201: ok_example({"message": "User registered successfully"}),
               400: error("The username or email is taken, or a field is invalid (`detail` names it)",
                          "A user with this username or email already exists"),
               **_RATE_LIMITED},
    openapi_extra=body_example(SignupRequest, **{"x-validation-status": 400}),
    summary="Register a new user account",
    description="Creates an account. Usernames are 3 to 64 letters, digits, `_`, `.` or `-` and compared "
    "without case; passwords have at least 12 characters (the same password signs you in to the MLflow UI). "
    "Then log in for a token.",
)
def signup(body: SignupRequest, session: SessionDep, request: Request) -> SignupResponse:
    email = body.email.lower()
    taken = session.scalar(
        select(User.id).where(or_(func.lower(User.username) == body.username.lower(), User.email == email))
    )
    if taken:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=_EXISTS)
    mlflow_accounts = mlflow_users.accounts(request)
    mlflow_users.refuse_reserved(mlflow_accounts, body.username)  # a service's MLflow account
    session.add(User(username=body.username, email=email, hashed_password=hash_password(body.password)))
    try:
        session.commit()
    except IntegrityError:  # a concurrent signup won the race
        session.rollback()
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=_EXISTS) from None
    # the user's MLflow account (same username and password), READ on their own experiment
    mlflow_users.after_signup(mlflow_accounts, body.username, body.password)
    return SignupResponse(message="User registered successfully")


@router.post(
    "/login",
    response_model=Token,
    responses={200: ok_example({"access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIwYzlkOGU3ZiJ9.c2lnbmF0dXJl",
                                "token_type": "bearer"}),
               401: error("Unknown username or wrong password", "Incorrect username or password"),
               **_RATE_LIMITED},
    openapi_extra=body_example(LoginRequest),
    summary="Log in and get a bearer access token",
    description="Send the token as `Authorization: Bearer <access_token>` on every other call. It expires after "
    "`QLORA_ACCESS_TOKEN_EXPIRE_MINUTES` (a day by default); then log in again.",
)
def login(body: LoginRequest, session: SessionDep, settings: SettingsDep, request: Request,
          background: BackgroundTasks) -> Token:
    user = session.scalar(select(User).where(func.lower(User.username) == body.username.lower()))
    if not verify_password(body.password, user.hashed_password if user else None) or user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="Incorrect username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # after the answer: the MLflow account repaired if it drifted (signup while MLflow was down...)
    background.add_task(mlflow_users.after_login, mlflow_users.accounts(request), user.username, body.password)
    return Token(access_token=create_access_token(user.id, settings), token_type="bearer")


@router.get(
    "/me",
    response_model=UserPublic,
    responses={200: ok_example({"id": "0c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f", "username": "ada", "email": "ada@example.com",
                                "created_at": "2026-11-25T10:00:00Z"}),
               **UNAUTHORIZED},
    operation_id="getCurrentUser",
    summary="The authenticated user",
    description="Who the bearer token belongs to: a cheap way to check that a token still works.",
)
def me(user: CurrentUser) -> User:
    return user
