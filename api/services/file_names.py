"""Upload file names: what archive types are accepted and how a user's name becomes a safe key part."""

from __future__ import annotations

import re
import unicodedata

from api.services.errors import InvalidInput

SUPPORTED_EXTENSIONS = (".zip",)
SUPPORTED_MIME_TYPES = ("application/zip", "application/x-zip-compressed", "application/octet-stream")
MAX_FILE_NAME_LENGTH = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SUPPORTED = (
    f"supported: {', '.join(SUPPORTED_EXTENSIONS)} archives sent as {', '.join(SUPPORTED_MIME_TYPES)}"
)


def sanitize_file_name(file_name: str) -> str:
    """The base name of `file_name` reduced to `[A-Za-z0-9._-]`, no leading dots, at most 128 chars.

    Directory parts (`/`, `\\`, drive letters), traversal (`..`) and control characters are dropped;
    other characters become `_`. Raises InvalidInput when nothing usable or no `.zip` remains.
    """
    name = unicodedata.normalize("NFKC", file_name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")  # control, format, ...
    name = re.split(r"[\\/]", name)[-1]
    name = name.split(":")[-1]  # C:evil.zip, alternate data streams
    name = _UNSAFE.sub("_", name.strip())
    name = re.sub(r"_{2,}", "_", name)
    stem, dot, ext = name.rpartition(".")
    if not dot or f".{ext.lower()}" not in SUPPORTED_EXTENSIONS:
        raise InvalidInput(f"Unsupported archive type for file_name {file_name[:100]!r}; {_SUPPORTED}")
    stem = stem.strip("._-")  # no hidden files, no `..`
    if not stem:
        raise InvalidInput(f"file_name {file_name[:100]!r} has no usable characters before the extension")
    ext = ext.lower()
    return f"{stem[: MAX_FILE_NAME_LENGTH - len(ext) - 1]}.{ext}"


def check_file_type(file_type: str) -> None:
    mime = file_type.split(";")[0].strip().lower()
    if mime not in SUPPORTED_MIME_TYPES:
        raise InvalidInput(f"Unsupported file_type {file_type[:100]!r}; {_SUPPORTED}")
