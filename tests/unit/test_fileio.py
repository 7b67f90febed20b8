"""The one way a file is replaced or moved in (secondreader.fileio): whole or not at all."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from secondreader import fileio
from secondreader.fileio import atomic_path, move_durably, write_bytes_atomic


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out" / "result.json"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target, durable=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer died")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_two_writers_of_one_file_each_get_a_temporary_of_their_own(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert target.read_bytes() == b"1"  # the outer block ended last: its file stands
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_a_move_renames_and_across_file_systems_copies_whole(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    source, target = tmp_path / "member.dcm", tmp_path / "spool" / "a" / "x.dcm"
    source.write_bytes(b"dicom")
    inode = source.stat().st_ino
    move_durably(source, target)
    assert not source.exists() and target.read_bytes() == b"dicom" and target.stat().st_ino == inode

    real_replace = os.replace

    def across_devices(src: object, dst: object) -> None:
        if str(src) == str(source):  # the rename of the source itself: another file system
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)  # type: ignore[arg-type]

    source.write_bytes(b"second")
    monkeypatch.setattr(fileio.os, "replace", across_devices)
    move_durably(source, target)
    assert not source.exists() and target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.dcm"]
