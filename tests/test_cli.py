"""The `zen-coder` command as users run it: help, one-line errors, the mining summary."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.data import bases
from tests.gitrepo import GitRepo


def zen_coder(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zen_coder.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "ZEN_CODER_SALT": "cli-test"},
    )


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert result.returncode == code
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"zen-coder: error: {text}"]


def test_help_explains_each_command():
    top = zen_coder("--help")
    assert top.returncode == 0
    assert "mine" in top.stdout and "git histories" in top.stdout
    mine = zen_coder("mine", "--help")
    assert mine.returncode == 0
    for option in ("--out", "--manifest", "--workers", "--executor", "--set", "--config"):
        assert option in mine.stdout


def test_usage_errors_are_one_line(tmp_path):
    assert_one_line_error(
        zen_coder("mine", "--out", str(tmp_path / "o")),
        2,
        "nothing to mine: pass repository paths or URLs, or --manifest FILE",
    )
    result = zen_coder("mine", ".", "--out", str(tmp_path / "o"), "--set", "max_files=3")
    assert result.returncode == 2 and "unknown mine setting 'max_files'" in result.stderr
    result = zen_coder("mine", ".", "--out", str(tmp_path / "o"), "--set", "dedup_near=maybe")
    assert_one_line_error(result, 2, "mine setting dedup_near expects true or false, got 'maybe'")
    bad = tmp_path / "bad.toml"
    bad.write_text("[mine\n")
    result = zen_coder("mine", ".", "--out", str(tmp_path / "o"), "--config", str(bad))
    assert result.returncode == 2 and f"config file {bad} is not valid TOML" in result.stderr
    missing = tmp_path / "missing.toml"
    result = zen_coder("mine", "--manifest", str(missing), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, 2, f"manifest not found: {missing}")


def test_a_bad_repository_is_one_line_and_the_run_goes_on(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.write("main.py", "print('hi')\n")
    repo.commit("Add main")
    result = zen_coder("mine", str(tmp_path / "nope"), str(repo.path), "--out", str(tmp_path / "o"))
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert f"error: {tmp_path / 'nope'}: no such directory" in result.stdout
    assert "records" in result.stdout
    assert (tmp_path / "o" / "manifest.json").exists()


def test_mine_prints_a_summary(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.write("main.py", "print('hi')\n")
    repo.commit("Add main")
    repo.write("package-lock.json", "{}\n")
    repo.commit("Add lockfile")
    result = zen_coder("mine", str(repo.path), "--out", str(tmp_path / "o"), "--quiet")
    assert result.returncode == 0, result.stderr
    for text in ("commits seen", "records", "no_files_left", "lockfile", "Python", "manifest:"):
        assert text in result.stdout


def imported_modules(result: subprocess.CompletedProcess) -> set[str]:
    """The modules a command run with `python -X importtime` imported, from its stderr."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_a_rerun_with_nothing_new_imports_no_heavy_module(tmp_path):
    """numpy, pyarrow, Pygments and a progress bar are 0.15 s of imports, more than the rest of a
    rerun that finds nothing to mine; only extraction and dedup need them. (Importing
    zen_coder.history.dedup at the top of pipeline.py again makes this fail.)"""
    repo = GitRepo(tmp_path / "repo")
    repo.write("main.py", "print('hi')\n")
    repo.commit("Add main")
    args = ["mine", str(repo.path), "--out", str(tmp_path / "o"), "--quiet"]
    assert zen_coder(*args).returncode == 0
    rerun = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "zen_coder.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "ZEN_CODER_SALT": "cli-test"},
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "0 new commits" in rerun.stdout
    modules = imported_modules(rerun)
    assert "zen_coder.history.pipeline" in modules  # the check sees what the run imported
    heavy = {"numpy", "pyarrow", "pygments", "pygit2", "rich.progress"} & modules
    assert not heavy, heavy


PEAK_RSS = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
"""


def peak_rss_mb(*args: str) -> int:
    command = [sys.executable, "-m", "zen_coder.cli", *args]
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *command],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "ZEN_CODER_SALT": "cli-test"},
    )
    return int(result.stdout)


def test_a_100_mb_blob_and_a_5000_file_commit_cost_nothing(tmp_path):
    small = GitRepo(tmp_path / "small")
    small.write("app.py", "print(1)\n")
    small.commit("Add app")
    baseline = peak_rss_mb("mine", str(small.path), "--out", str(tmp_path / "o1"), "--workers", "1")

    repo = GitRepo(tmp_path / "big")
    (repo.path / "data.json").write_text("[" + "1," * 50_000_000 + "1]\n")  # 100 MB
    repo.git("add", "data.json")
    repo.write("app.py", "print(1)\n")
    repo.commit("Add data")
    for i in range(5000):
        (repo.path / "many" / f"f{i}.py").parent.mkdir(exist_ok=True)
        (repo.path / "many" / f"f{i}.py").write_text(f"x = {i}\n")
    repo.git("add", "many")
    repo.commit("Add many files")
    out = tmp_path / "o2"
    peak = peak_rss_mb("mine", str(repo.path), "--out", str(out), "--workers", "1")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["file_reasons"] == {"file_too_large": 1}
    assert manifest["totals"]["commit_reasons"] == {"too_many_files": 1}
    # Reading the blob would cost 100 MB of bytes and 100 MB of text.
    assert peak < baseline + 50, (peak, baseline)


def test_prepare_prints_a_summary_and_errors_in_one_line(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    for i in range(6):
        repo.write("app.py", "".join(f"def f{j}():\n    return {i * j}\n\n\n" for j in range(5)))
        repo.commit(f"Scale the helpers by {i} for the new pricing rules")
    mined = tmp_path / "mined"
    assert zen_coder("mine", str(repo.path), "--out", str(mined), "--quiet").returncode == 0
    out = tmp_path / "prepared"
    args = ["prepare", str(mined), "--out", str(out), "--quiet", "--set", "vocab_size=600"]
    result = zen_coder(*args, "--set", "context_length=64", "--set", "decontaminate=false")
    assert result.returncode == 0, result.stderr
    for text in ("vocabulary", "train", "validation", "commit_edit", "manifest:"):
        assert text in result.stdout
    assert (out / "tokenizer.json").exists() and "added" not in result.stdout
    base = bases.codellama(tmp_path / "codellama").path
    args = ["prepare", str(mined), "--out", str(tmp_path / "p2"), "--tokenizer", str(base)]
    result = zen_coder(
        *args, "--quiet", "--set", "context_length=64", "--set", "decontaminate=false"
    )
    assert result.returncode == 0, result.stderr
    assert "12 special tokens added" in result.stdout
    assert_one_line_error(
        zen_coder("prepare", str(tmp_path / "nothing"), "--out", str(out)),
        2,
        f"{tmp_path / 'nothing' / 'manifest.json'} not found: {tmp_path / 'nothing'} is not a "
        "mined dataset; run `zen-coder mine` first",
    )


def test_every_command_shows_one_kind_of_progress_bar(tmp_path):
    """mine and prepare (like train and eval) draw their bars with the CLI's one builder: label,
    bar, done/total and unit, then what is being worked on. Before there was one builder, mine's
    bar read `mining r ━━ 6/6 commits`, and this test failed on it."""
    repo = GitRepo(tmp_path / "r")
    for i in range(6):
        repo.write("app.py", f"def f():\n    return {i}\n")
        repo.commit(f"Scale the helper by {i} for the new pricing rules")
    mined, prepared = tmp_path / "mined", tmp_path / "prepared"
    result = zen_coder("mine", str(repo.path), "--out", str(mined))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^mining ━+ 6/6 commits r ", result.stdout, re.MULTILINE), result.stdout
    args = ["--set", "vocab_size=600", "--set", "context_length=64", "--set", "decontaminate=false"]
    result = zen_coder("prepare", str(mined), "--out", str(prepared), *args)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^preparing ━+ 6/6 records ", result.stdout, re.MULTILINE), result.stdout


def test_config_prints_the_card_preset_counts():
    result = zen_coder("config", "--preset", "zen-coder-70b", "--set", "contrastive_loss=false")
    assert result.returncode == 0, result.stderr
    assert "(70.56B)" in result.stdout and "(28.28B)" in result.stdout
    assert_one_line_error(
        zen_coder("config", "--preset", "huge"),
        2,
        "unknown model preset 'huge'; choose one of tiny, small, zen-coder-70b",
    )
