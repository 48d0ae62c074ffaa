"""Errors the services raise; `api.main` turns each into its HTTP status with a `detail`."""


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        #: extra response headers (e.g. `Retry-After`)
        self.headers = headers


class InvalidInput(ServiceError):
    status_code = 400


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class TooManyRequests(ServiceError):
    """429: a limit of the caller's is reached; `retry_after_s` becomes `Retry-After`."""

    status_code = 429

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail, {"Retry-After": str(max(1, int(retry_after_s)))})


class Unavailable(ServiceError):
    """503: a service the request needs is down or not ready; retry after `retry_after_s`."""

    status_code = 503

    def __init__(self, detail: str, retry_after_s: int = 30) -> None:
        super().__init__(detail, {"Retry-After": str(max(1, int(retry_after_s)))})


class TooLarge(ServiceError):
    """Past a size limit of the user's (the storage quota): 413."""

    status_code = 413
