"""Item records (what made an item) and the work directory's lock, as units."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llava.visatb.chain.lock import LockHeld, WorkDirLock
from llava.visatb.chain.records import FileHasher, Record, command_params, portable, record_changes


def test_a_file_digest_is_its_sha256_and_is_cached_by_size_and_mtime(tmp_path):
    data = tmp_path / "data.json"
    data.write_text('[{"id": 1}]')
    hasher = FileHasher(tmp_path / "cache" / "hashes.json")
    assert hasher.file(data) == hashlib.sha256(b'[{"id": 1}]').hexdigest()
    hasher.save()
    cached = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert cached[str(data.resolve())][2] == hashlib.sha256(b'[{"id": 1}]').hexdigest()
    # Same size, new content and mtime: hashed again, not answered from the cache.
    data.write_text('[{"id": 2}]')
    os.utime(data, ns=(1, 1))
    assert FileHasher(tmp_path / "cache" / "hashes.json").file(data) == hashlib.sha256(b'[{"id": 2}]').hexdigest()


def test_a_model_folder_digest_changes_with_any_top_level_file_but_not_with_checkpoints(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "pytorch_model.bin").write_bytes(b"\0" * 10)
    hasher = FileHasher(tmp_path / "hashes.json")
    before = hasher.path(model)
    (model / "checkpoint-2").mkdir()
    (model / "checkpoint-2" / "optimizer.pt").write_bytes(b"x")
    assert hasher.path(model) == before
    (model / "pytorch_model.bin").write_bytes(b"\1" * 10)
    assert hasher.path(model) != before
    assert hasher.path(tmp_path / "nowhere") == f"absent:{tmp_path / 'nowhere'}"
    assert hasher.path("lmsys/vicuna-7b-v1.5") == "absent:lmsys/vicuna-7b-v1.5"


def test_the_interpreter_and_checkout_paths_are_not_parameters(tmp_path):
    command = [sys.executable, str(tmp_path / "weighting_visatb.py"), "--temperature", "0.5"]
    assert command_params(command, sys.executable, tmp_path) == ["python", "weighting_visatb.py", "--temperature", "0.5"]


def test_changes_name_the_flag_the_variable_and_the_input():
    old = Record({"command": ["python", "w.py", "--temperature", "0.5"], "env": {"WEIGHT_METHOD": "EW"}},
                 {"data": "sha256:aaa", "weights": "sha256:bbb"}).to_json()  # fmt: skip
    new = Record({"command": ["python", "w.py", "--temperature", "2.0"], "env": {"WEIGHT_METHOD": "DWA"}},
                 {"data": "sha256:ccc", "subset": "sha256:ddd"})  # fmt: skip
    reasons = record_changes(old, new, {"data": "training data d.json"})
    assert reasons == ["--temperature 0.5 -> 2.0", "WEIGHT_METHOD EW -> DWA", "training data d.json changed",
                       "new input subset", "input weights no longer used"]  # fmt: skip
    assert record_changes(old, Record(old["params"], old["inputs"])) == []
    assert record_changes({"item": "x"}, new) == ["its done-marker holds no record of what made it"]


def test_a_changed_command_length_lists_what_was_added():
    old = Record({"command": ["python", "s.py", "--tasks", "A,B"]}).to_json()
    new = Record({"command": ["python", "s.py", "--tasks", "A,B", "--alone"]})
    assert record_changes(old, new) == ["command line: added --alone"]


def test_the_lock_names_a_live_holder_and_is_released(tmp_path):
    with WorkDirLock(tmp_path):
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(LockHeld, match=rf"in use by another chain: pid {os.getpid()} on this host"):
            WorkDirLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname(), "started": "then"}))
    said = []
    with WorkDirLock(tmp_path, say=said.append):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert said and f"pid {dead_pid}" in said[0] and "no longer running" in said[0]


def test_a_reused_pid_does_not_keep_a_lock(tmp_path):
    # The pid is alive (this process) but started at another time than the lock says: not the holder.
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                "process_start": "1", "started": "then"}))  # fmt: skip
    with WorkDirLock(tmp_path, say=lambda _: None):
        pass


def test_a_holder_on_another_host_is_never_taken_over(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "node-elsewhere", "started": "then"}))
    with pytest.raises(LockHeld, match="pid 1 on host node-elsewhere.*delete") as error:
        WorkDirLock(tmp_path).acquire()
    assert str(Path(tmp_path / ".lock")) in str(error.value)


def test_a_path_through_a_symbolic_link_to_the_work_dir_is_the_same_parameter(tmp_path):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (tmp_path / "seed0").symlink_to(work, target_is_directory=True)
    roots = {str(work): "$WORK_DIR"}
    assert portable(str(work / "data" / "x.json"), roots) == "$WORK_DIR/data/x.json"
    assert portable(str(tmp_path / "seed0" / "data" / "x.json"), roots) == "$WORK_DIR/data/x.json"
    assert portable(str(tmp_path / "elsewhere.json"), roots) == str(tmp_path / "elsewhere.json")
    assert portable("lmsys/vicuna-7b-v1.5", roots) == "lmsys/vicuna-7b-v1.5"
