"""Safe extraction of uploaded dataset archives (zip).

Everything a user uploads is hostile until checked: member names that climb out of the
target folder (zip slip), absolute paths, symlinks and other special files, zip bombs (by
compression ratio and by total uncompressed size) and archives with too many members are
refused with an `ArchiveError` naming the offending member. Sizes are enforced while
streaming, so a lying header cannot inflate past the limits.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: members skipped silently (macOS resource forks)
IGNORED_PREFIXES = ("__MACOSX/",)
_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """The archive is unsafe, corrupt or not a zip; the message names the offending member."""


@dataclass(frozen=True)
class ArchiveLimits:
    #: most members (files and folders) the archive may hold
    max_files: int = 10_000
    #: most bytes all members may extract to
    max_total_bytes: int = 20 * 1024**3
    #: highest uncompressed/compressed ratio of a member (checked for members above `ratio_min_bytes`)
    max_ratio: float = 200.0
    #: members smaller than this are not ratio-checked (a small text file may compress very well)
    ratio_min_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class ExtractedArchive:
    folder: Path
    #: extracted regular files, relative POSIX paths
    files: tuple[str, ...]
    total_bytes: int


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why the member's name or type is unsafe, or None."""
    name = info.filename
    if "\x00" in name or any(ord(c) < 32 for c in name):
        return "has control characters in its name"
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return "has an absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "escapes the extraction folder (zip slip: '..' in its path)"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "is not a regular file or folder"
    if info.flag_bits & 0x1:
        return "is encrypted"
    return None


def check_members(archive: zipfile.ZipFile, limits: ArchiveLimits) -> list[zipfile.ZipInfo]:
    """Checks every member's header against `limits`; returns the members to extract."""
    infos = archive.infolist()
    if len(infos) > limits.max_files:
        raise ArchiveError(f"the archive has {len(infos)} members, more than the limit of "
                           f"{limits.max_files}")
    if not infos:
        raise ArchiveError("the archive is empty")
    total = 0
    seen: set[str] = set()
    keep = []
    for info in infos:
        problem = _member_problem(info)
        if problem:
            raise ArchiveError(f"unsafe archive member '{info.filename}': it {problem}")
        name = info.filename.replace("\\", "/")
        if name.startswith(IGNORED_PREFIXES):
            continue
        key = name.rstrip("/").lower()
        if key in seen:
            raise ArchiveError(f"archive member '{info.filename}' appears more than once")
        seen.add(key)
        if info.is_dir():
            keep.append(info)
            continue
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ArchiveError(f"the archive extracts to more than {limits.max_total_bytes} bytes "
                               f"(limit reached at member '{info.filename}')")
        if info.file_size >= limits.ratio_min_bytes:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > limits.max_ratio:
                raise ArchiveError(f"archive member '{info.filename}' has a compression ratio of "
                                   f"{ratio:.0f}:1, above the limit of {limits.max_ratio:.0f}:1 "
                                   "(zip bomb?)")
        keep.append(info)
    compressed = sum(i.compress_size for i in keep if not i.is_dir())
    if total >= limits.ratio_min_bytes and total / max(compressed, 1) > limits.max_ratio:
        raise ArchiveError(f"the archive's members have an overall compression ratio of "
                           f"{total / max(compressed, 1):.0f}:1, above the limit of "
                           f"{limits.max_ratio:.0f}:1 (zip bomb of many small members?)")
    return keep


def extract_archive(archive_path: str | Path, dest: str | Path, *,
                    limits: ArchiveLimits | None = None) -> ExtractedArchive:
    """Extracts the zip at `archive_path` into the (new or empty) folder `dest`, safely."""
    limits = limits or ArchiveLimits()
    archive_path, dest = Path(archive_path), Path(dest)
    if not archive_path.is_file():
        raise ArchiveError(f"{archive_path.name}: the archive file does not exist")
    if not zipfile.is_zipfile(archive_path):
        raise ArchiveError(f"{archive_path.name}: not a zip archive (or a corrupt one)")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    files: list[str] = []
    written_total = 0
    try:
        with zipfile.ZipFile(archive_path) as archive:
            for info in check_members(archive, limits):
                name = info.filename.replace("\\", "/")
                target = (root / name).resolve()
                if target != root and root not in target.parents:
                    raise ArchiveError(f"unsafe archive member '{info.filename}': it escapes the "
                                       "extraction folder")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with archive.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        written_total += len(chunk)
                        if written > info.file_size or written_total > limits.max_total_bytes:
                            raise ArchiveError(f"archive member '{info.filename}' extracts to "
                                               "more bytes than its header declares (zip bomb?)")
                        out.write(chunk)
                files.append(target.relative_to(root).as_posix())
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError,
            NotImplementedError, ValueError) as exc:
        raise ArchiveError(f"{archive_path.name}: corrupt archive ({exc})") from None
    return ExtractedArchive(folder=dest, files=tuple(files), total_bytes=written_total)


def clear_folder(folder: Path) -> None:
    """Removes `folder` and what it holds (used before re-extracting into a cache folder)."""
    shutil.rmtree(folder, ignore_errors=True)
