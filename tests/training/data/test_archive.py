"""Safe extraction of uploaded zips: hostile archives are refused with the member named."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from training.data.archive import ArchiveError, ArchiveLimits, extract_archive
from training.data.synthetic import make_dataset, zip_folder


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_extracts_a_generated_dataset(tmp_path):
    folder = make_dataset(tmp_path / "ds", 4)
    archive = zip_folder(folder, tmp_path / "ds.zip")
    out = extract_archive(archive, tmp_path / "out")
    expected = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted(out.files) == expected
    assert out.total_bytes == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert (tmp_path / "out" / "metadata.csv").read_bytes() == (folder / "metadata.csv").read_bytes()


def test_zip_slip_is_refused_and_nothing_escapes(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"ok.mp4": b"x", "clips/../../evil.mp4": b"x"})
    with pytest.raises(ArchiveError, match=r"'clips/\.\./\.\./evil\.mp4'.*zip slip"):
        extract_archive(archive, tmp_path / "out" / "inner")
    assert not (tmp_path / "out" / "evil.mp4").exists()
    assert not (tmp_path / "evil.mp4").exists()


def test_parent_member_is_refused(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"../evil.mp4": b"x"})
    with pytest.raises(ArchiveError, match=r"'\.\./evil\.mp4'"):
        extract_archive(archive, tmp_path / "out")


@pytest.mark.parametrize("name", ["/abs.mp4", "C:/abs.mp4"])
def test_absolute_paths_are_refused(tmp_path, name):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("placeholder.mp4")
        info.filename = name  # ZipInfo() strips a leading slash; set the raw name by hand
        zf.writestr(info, b"x")
    with pytest.raises(ArchiveError, match="absolute path") as err:
        extract_archive(archive, tmp_path / "out")
    assert name in str(err.value)
    assert not Path("/abs.mp4").exists()


def test_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("clips/link.mp4")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match=r"'clips/link\.mp4'.*symbolic link"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "clips" / "link.mp4").exists()


def test_zip_bomb_by_ratio_is_refused(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", {"zeros.mp4": b"\0" * (20 * 1024 * 1024)})
    assert archive.stat().st_size < 100_000
    with pytest.raises(ArchiveError, match=r"'zeros\.mp4'.*compression ratio.*zip bomb"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "zeros.mp4").exists()


def test_bomb_of_many_small_members_is_refused_by_overall_ratio(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", {f"z{i}.mp4": b"\0" * 512 * 1024 for i in range(40)})
    with pytest.raises(ArchiveError, match="overall compression ratio"):
        extract_archive(archive, tmp_path / "out")


def test_total_uncompressed_size_limit(tmp_path):
    archive = _zip(tmp_path / "a.zip", {f"c{i}.mp4": bytes(range(256)) * 40 for i in range(5)})
    with pytest.raises(ArchiveError, match=r"more than 30000 bytes.*'c2\.mp4'"):
        extract_archive(archive, tmp_path / "out", limits=ArchiveLimits(max_total_bytes=30_000))


def test_header_that_lies_about_size_is_caught_while_streaming(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"big.mp4": b"\0" * 50_000})
    raw = bytearray(archive.read_bytes())
    # shrink the declared uncompressed size (central directory and local header) to 10 bytes
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("big.mp4")
    size = info.file_size.to_bytes(4, "little")
    raw = raw.replace(size, (10).to_bytes(4, "little"))
    archive.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match=r"'big\.mp4'|corrupt"):
        extract_archive(archive, tmp_path / "out")


def test_too_many_files(tmp_path):
    archive = _zip(tmp_path / "a.zip", {f"c{i}.mp4": b"x" for i in range(30)})
    with pytest.raises(ArchiveError, match="30 members, more than the limit of 25"):
        extract_archive(archive, tmp_path / "out", limits=ArchiveLimits(max_files=25))


def test_not_a_zip(tmp_path):
    bogus = tmp_path / "data.zip"
    bogus.write_bytes(b"this is not a zip archive at all" * 10)
    with pytest.raises(ArchiveError, match=r"data\.zip: not a zip archive"):
        extract_archive(bogus, tmp_path / "out")


def test_corrupt_member_data(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"clip.mp4": bytes(range(256)) * 100})
    raw = bytearray(archive.read_bytes())
    header_end = 30 + len("clip.mp4")
    for i in range(header_end + 10, header_end + 60):
        raw[i] ^= 0xFF
    archive.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match=r"a\.zip: corrupt archive"):
        extract_archive(archive, tmp_path / "out")


def test_macosx_resource_forks_are_skipped(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"ds/a.mp4": b"x", "__MACOSX/ds/._a.mp4": b"junk"})
    out = extract_archive(archive, tmp_path / "out")
    assert out.files == ("ds/a.mp4",)
    assert not (tmp_path / "out" / "__MACOSX").exists()
