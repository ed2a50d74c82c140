"""zen_coder/files.py: the one place that makes files and folders appear whole or not at all."""

from __future__ import annotations

import ast
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from zen_coder.files import (
    TEMPORARY_GLOB,
    install_directory,
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
)

SOURCE = Path(__file__).resolve().parents[1] / "src" / "zen_coder"


def test_a_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "deep" / "er" / "file.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n "a": [\n  1,\n  2\n ],\n "b": 1\n}\n'
    write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.json"]


def test_a_failed_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"old")

    def half_then_fail(temporary: Path) -> None:
        temporary.write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def write_half_then_hang(path: Path, started: Connection) -> None:
    """Start writing `path` atomically, say so, and hang until killed."""

    def half(temporary: Path) -> None:
        temporary.write_bytes(b"half of the new")
        started.send("writing")
        time.sleep(60)

    write_atomic(path, half)


def test_a_process_killed_while_writing_leaves_the_old_file(tmp_path):
    """A real crash: SIGKILL in the middle of the write. The old content stays under the name,
    and the half-written temporary is one that recovery's glob finds."""
    path = tmp_path / "manifest.json"
    path.write_text("old\n")
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    writer = context.Process(target=write_half_then_hang, args=(path, sending))
    writer.start()
    try:
        assert receiving.poll(30) and receiving.recv() == "writing"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
    assert path.read_text() == "old\n"
    leftovers = list(tmp_path.glob(TEMPORARY_GLOB))
    assert [p.read_bytes() for p in leftovers] == [b"half of the new"]


def test_install_directory_replaces_a_full_folder(tmp_path):
    target, work = tmp_path / "prepared", tmp_path / ".prepared.tmp-1"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "old.txt").write_text("old")
    (work / "new").mkdir(parents=True)
    (work / "new" / "new.txt").write_text("new")
    install_directory(work, target)
    assert [p.relative_to(target).as_posix() for p in sorted(target.rglob("*"))] == [
        "new",
        "new/new.txt",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def renames_outside_files_py() -> list[str]:
    """Calls that put a file in place by renaming it (`os.replace`, `os.rename`, `.rename(`,
    `.replace(` on a path, an fsync), anywhere in the package but files.py."""
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        if path.name == "files.py" and path.parent == SOURCE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name, owner = node.func.attr, node.func.value
            is_os = isinstance(owner, ast.Name) and owner.id == "os"
            path_replace = name == "replace" and len(node.args) == 1 and not node.keywords
            if name in ("rename", "fsync") or (is_os and name == "replace") or path_replace:
                found.append(f"{path.relative_to(SOURCE)}:{node.lineno}")
    return found


def test_every_stage_writes_through_files_py():
    """One atomic-write helper: no module renames files into place itself. Checked by hand:
    before files.py held the helper, this listed 11 places in history/store.py, model/hf.py,
    model/folder.py, quickstart.py, data/decontaminate.py, data/pipeline.py, history/sources.py
    and training/checkpoint.py."""
    assert renames_outside_files_py() == []
