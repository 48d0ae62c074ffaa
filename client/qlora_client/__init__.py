"""The `qlora` command line and the typed Python client of the QLoRA Orchestration Service."""

from qlora_client.client import ApiError, Client, NotLoggedIn
from qlora_client.upload import UploadFailed, UploadInterrupted, UploadResult

__version__ = "0.1.0"
__all__ = ["ApiError", "Client", "NotLoggedIn", "UploadFailed", "UploadInterrupted", "UploadResult", "__version__"]
