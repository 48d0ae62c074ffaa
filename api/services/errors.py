"""Errors the services raise; `api.main` turns each into its HTTP status with a `detail`."""


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(ServiceError):
    status_code = 400


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class TooLarge(ServiceError):
    """Past a size limit of the user's (the storage quota): 413."""

    status_code = 413
