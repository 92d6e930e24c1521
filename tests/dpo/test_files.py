"""Atomic publishing: the new folder replaces the old in one rename, a failed swap puts the old back."""

import os

import pytest

from dpo import publish_dir, temp_sibling, write_json_atomic, write_text_atomic


def folder(path, text):
    path.mkdir()
    (path / "f.txt").write_text(text)
    return path


def test_publish_replaces_the_old_folder_and_leaves_nothing_beside_it(tmp_path):
    folder(tmp_path / "dest", "old")
    publish_dir(folder(temp_sibling(tmp_path / "dest"), "new"), tmp_path / "dest", durable=True)
    assert (tmp_path / "dest" / "f.txt").read_text() == "new" and os.listdir(tmp_path) == ["dest"]
    publish_dir(folder(tmp_path / "fresh-tmp", "first"), tmp_path / "fresh")  # nothing there before
    assert (tmp_path / "fresh" / "f.txt").read_text() == "first"


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    folder(tmp_path / "dest", "old")
    tmp = folder(tmp_path / "tmp", "new")
    real_rename = os.rename

    def rename(src, dst):
        if str(src) == str(tmp):
            raise OSError("device gone")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="device gone"):
        publish_dir(tmp, tmp_path / "dest")
    assert (tmp_path / "dest" / "f.txt").read_text() == "old"


def test_atomic_text_and_json(tmp_path):
    write_text_atomic(tmp_path / "a" / "x.txt", "one")
    write_json_atomic(tmp_path / "a" / "y.json", {"b": 1, "a": 2}, durable=True)
    assert (tmp_path / "a" / "x.txt").read_text() == "one"
    assert (tmp_path / "a" / "y.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert sorted(os.listdir(tmp_path / "a")) == ["x.txt", "y.json"]
