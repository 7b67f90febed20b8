"""How `secondreader screen` and the upload paths expand what they are given into inputs."""

from __future__ import annotations

from pathlib import Path

from secondreader.dicom.io import InputFile, InputProblem, iter_inputs


def test_hidden_files_and_hidden_folders_inside_a_folder_are_passed_over(tmp_path: Path) -> None:
    # a user runs `secondreader screen .` where an earlier run left its home (key, quarantine)
    (tmp_path / ".secondreader" / "quarantine").mkdir(parents=True)
    (tmp_path / ".secondreader" / "secret.key").write_bytes(b"k" * 32)
    (tmp_path / ".secondreader" / "quarantine" / "abc.bin").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "studies" / "a").mkdir(parents=True)
    (tmp_path / "studies" / "a" / "one.dcm").write_bytes(b"\0" * 200)
    (tmp_path / "two.dcm").write_bytes(b"\0" * 200)
    found = list(iter_inputs([tmp_path]))
    assert all(isinstance(f, InputFile) for f in found)
    assert [f.source for f in found] == ["one.dcm", "two.dcm"]
    # a hidden folder named on the command line itself is still read
    (tmp_path / ".export").mkdir()
    (tmp_path / ".export" / "three.dcm").write_bytes(b"\0" * 200)
    assert [f.source for f in iter_inputs([tmp_path / ".export"])] == ["three.dcm"]


def test_a_missing_path_is_a_problem_named_by_its_file_name(tmp_path: Path) -> None:
    (problem,) = iter_inputs([tmp_path / "nowhere" / "x.dcm"])
    assert isinstance(problem, InputProblem) and problem.source == "x.dcm"
    assert problem.reason == "no such file or folder"
