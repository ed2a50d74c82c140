"""Mining runs: parallelism, incremental reruns, forks, cross-repository duplicates, inputs."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.gitrepo import GitRepo
from tests.history import zoo
from tests.history.test_mine import SALT, read_records
from zen_coder.errors import ZenCoderError
from zen_coder.history import extract, sources
from zen_coder.history.config import MineConfig
from zen_coder.history.pipeline import _share_out, mine
from zen_coder.history.sources import RepoSpec
from zen_coder.history.walk import WalkPlan, walk


def sorted_records(out: Path) -> list[dict]:
    return sorted(read_records(out), key=lambda r: (r["repo"], r["commit"], r["path"]))


def totals(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["totals"]


def content_totals(out: Path) -> dict:
    """The totals that do not depend on how the records were cut into shards."""
    return {k: v for k, v in totals(out).items() if k not in ("shards", "data_bytes")}


def small_repo(path: Path, files: int = 3) -> GitRepo:
    repo = GitRepo(path)
    for i in range(files):
        repo.write(f"pkg/module_{i}.py", f"def f{i}(x):\n    return x + {i}\n")
        repo.commit(f"Add module {i}")
    return repo


@pytest.fixture(scope="module")
def zoo_repo(tmp_path_factory) -> GitRepo:
    return zoo.build_zoo(tmp_path_factory.mktemp("zoo") / "repo")


def test_parallel_workers_and_small_batches_give_the_same_dataset(zoo_repo, tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    mine([RepoSpec(str(zoo_repo.path))], serial, workers=1, salt=SALT)
    config = MineConfig(commits_per_batch=3)
    mine([RepoSpec(str(zoo_repo.path))], parallel, config, workers=2, salt=SALT)
    assert sorted_records(parallel) == sorted_records(serial)
    assert content_totals(parallel) == content_totals(serial)


def test_a_short_history_is_cut_into_batches_of_equal_work(tmp_path):
    """Twelve commits of small files, then four that each add a large one: cut in two, the
    large ones must not all land in one batch while the other idles. (Cut by commit counts, the
    first batch would hold eight small commits and almost no work.)"""
    repo = GitRepo(tmp_path / "repo")
    for i in range(12):
        repo.write(f"small_{i}.py", f"x = {i}\n")
        repo.commit(f"Add small module {i}")
    for i in range(4):
        repo.write(f"large_{i}.py", "".join(f"value_{j} = {i * j}\n" for j in range(2000)))
        repo.commit(f"Add large module {i}")
    resolved = sources.resolve(RepoSpec(str(repo.path)), tmp_path / "cache")
    batches = list(walk(resolved, WalkPlan(MineConfig(), SALT, "", batches=2)))
    streamed = list(walk(resolved, WalkPlan(MineConfig(), SALT, "")))
    assert len(batches) == 2 and len(streamed) == 1
    assert [c.sha for b in batches for c in b.commits] == [c.sha for c in streamed[0].commits]
    large = [sum("large" in c.changes[0][0].path for c in batch.commits) for batch in batches]
    assert large == [2, 2]


def test_workers_are_started_for_histories_worth_sharing(tmp_path):
    """A few commits are mined inline; a few hundred by two workers in balanced batches."""
    repo = small_repo(tmp_path / "repo", files=3)
    resolved = sources.resolve(RepoSpec(str(repo.path)), tmp_path / "cache")
    config = MineConfig()
    plans = {resolved.name: WalkPlan(config, SALT, "")}
    assert _share_out([resolved], plans, {resolved.name: 3}, 2, config) == 1
    assert _share_out([resolved], plans, {resolved.name: 700}, 2, config) == 2
    assert plans[resolved.name].batches == 2
    assert _share_out([resolved], plans, {resolved.name: 5000}, 2, config) == 2
    assert plans[resolved.name].batches == 2  # left as it was: five rounds are cut as they go


@contextlib.contextmanager
def fresh_worker(monkeypatch) -> Iterator[None]:
    """This process's extraction state, new for the block, and its cat-file processes ended
    after it (dropped while running, they would outlive the test)."""
    worker = extract._Worker()
    monkeypatch.setattr(extract, "_WORKER", worker)
    try:
        yield
    finally:
        worker.close()


def test_contents_read_in_many_groups_give_the_same_dataset(zoo_repo, tmp_path, monkeypatch):
    """A batch's contents are read in groups of commits, bounded in bytes; with a group per
    commit, the versions a file shares between groups must still be there when each group is
    checked. (Checked by hand: checking a group's commits before reading its contents makes this
    fail.)"""
    whole, grouped = tmp_path / "whole", tmp_path / "grouped"
    with fresh_worker(monkeypatch):  # no text cached by other tests
        mine([RepoSpec(str(zoo_repo.path))], whole, workers=1, salt=SALT)
    monkeypatch.setattr(extract, "GROUP_BYTES", 1)
    with fresh_worker(monkeypatch):
        report = mine([RepoSpec(str(zoo_repo.path))], grouped, workers=1, salt=SALT)
    assert report.errors == []
    assert totals(grouped)["records"] == len(zoo.EXPECTED_RECORDS)
    assert sorted_records(grouped) == sorted_records(whole)
    assert totals(grouped) == totals(whole)


def test_rerun_mines_only_new_commits(tmp_path):
    repo = small_repo(tmp_path / "repo")
    out = tmp_path / "out"
    first = mine([RepoSpec(str(repo.path))], out, workers=1, salt=SALT)
    assert (first.new_commits, first.new_records) == (3, 3)
    again = mine([RepoSpec(str(repo.path))], out, workers=1, salt=SALT)
    assert (again.new_commits, again.new_records) == (0, 0)

    repo.write("pkg/module_0.py", "def f0(x):\n    return x * 2\n")
    repo.commit("Double in f0")
    repo.write("README.md", "# pkg\n")
    repo.commit("Add a readme")
    third = mine([RepoSpec(str(repo.path))], out, workers=1, salt=SALT)
    assert (third.new_commits, third.new_records) == (2, 2)

    fresh = tmp_path / "fresh"
    mine([RepoSpec(str(repo.path))], fresh, workers=1, salt=SALT)
    assert sorted_records(out) == sorted_records(fresh)
    assert totals(out)["commits_seen"] == 5
    changed = next(r for r in read_records(out) if r["message"] == "Double in f0")
    assert changed["history_position"] == 2
    assert len(json.loads((out / "manifest.json").read_text())["runs"]) == 3


def test_a_rerun_with_nothing_new_walks_no_history(tmp_path, monkeypatch):
    """When every commit is mined, a rerun lists the commits and stops: no `git log` reads their
    changed files only to skip them (0.5 s on a 20,000-commit history)."""
    repo = small_repo(tmp_path / "repo")
    out = tmp_path / "out"
    mine([RepoSpec(str(repo.path))], out, workers=1, salt=SALT)
    trace = tmp_path / "git-trace"
    monkeypatch.setenv("GIT_TRACE", str(trace))  # git itself logs every command it runs
    again = mine([RepoSpec(str(repo.path))], out, workers=1, salt=SALT)
    assert (again.new_commits, again.new_records) == (0, 0)
    commands = trace.read_text()
    assert "rev-list" in commands
    assert "git log" not in commands, commands


def test_extending_with_other_settings_or_salt_is_refused(tmp_path):
    repo = small_repo(tmp_path / "repo", files=1)
    out = tmp_path / "out"
    mine([RepoSpec(str(repo.path))], out, workers=1, salt=SALT)
    with pytest.raises(ZenCoderError, match="max_files_per_commit"):
        mine([RepoSpec(str(repo.path))], out, MineConfig(max_files_per_commit=3), salt=SALT)
    with pytest.raises(ZenCoderError, match="salt"):
        mine([RepoSpec(str(repo.path))], out, workers=1, salt=b"another")
    # Execution settings may change freely.
    mine([RepoSpec(str(repo.path))], out, MineConfig(commits_per_batch=7), workers=2, salt=SALT)


def test_a_fork_mines_shared_commits_once(tmp_path):
    upstream = small_repo(tmp_path / "upstream")
    fork = GitRepo.clone(upstream, tmp_path / "fork")
    fork.write("pkg/extra.py", "EXTRA = 1\n")
    fork.commit("Add extra")
    out = tmp_path / "out"
    mine([RepoSpec(str(upstream.path)), RepoSpec(str(fork.path))], out, workers=1, salt=SALT)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["repos"]["fork"]["commit_reasons"] == {"fork_duplicate": 3}
    assert manifest["repos"]["fork"]["records"] == 1
    assert manifest["repos"]["upstream"]["records"] == 3
    assert [r["message"] for r in read_records(out) if r["repo"] == "fork"] == ["Add extra"]


def long_module(variant: str) -> str:
    lines = [
        f"def handler_{i}(request):\n    return respond(request, code={i})\n" for i in range(40)
    ]
    lines[20] = f"def handler_20(request):\n    return respond(request, code={variant})\n"
    return "\n\n".join(lines)


def test_near_duplicates_are_removed_across_repositories_only(tmp_path):
    first = GitRepo(tmp_path / "first")
    first.write("handlers.py", long_module("20"))
    first.commit("Add handlers")
    second = GitRepo(tmp_path / "second")
    second.write("app/handlers.py", long_module("200"))  # one token differs: Jaccard ~0.97
    second.commit("Add request handlers")
    # Near-duplicates of each other, within one repository: both stay.
    views = "\n".join(f"def view_{i}(page):\n    return render(page, {i})\n" for i in range(30))
    second.write("app/views.py", views)
    second.commit("Add views")
    second.write("app/views_v2.py", views.replace("render(page, 7)", "render(page, 70)"))
    second.commit("Add views v2")
    out = tmp_path / "out"
    mine([RepoSpec(str(first.path)), RepoSpec(str(second.path))], out, workers=1, salt=SALT)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["file_reasons"] == {"near_duplicate": 1}
    kept = {(r["repo"], r["path"]) for r in read_records(out)}
    assert kept == {
        ("first", "handlers.py"),
        ("second", "app/views.py"),
        ("second", "app/views_v2.py"),
    }


def test_a_later_run_dedups_new_repositories_against_the_dataset(tmp_path):
    first = GitRepo(tmp_path / "first")
    first.write("handlers.py", long_module("20"))
    first.commit("Add handlers")
    second = GitRepo(tmp_path / "second")
    second.write("handlers.py", long_module("20"))
    second.commit("Add the same handlers")
    out = tmp_path / "out"
    mine([RepoSpec(str(first.path))], out, workers=1, salt=SALT)
    mine([RepoSpec(str(second.path))], out, workers=1, salt=SALT)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["repos"]["second"]["file_reasons"] == {"exact_duplicate": 1}
    assert {entry["name"] for entry in manifest["inputs"]} == {"first", "second"}


def test_near_duplicate_keys_are_computed_when_a_second_repository_arrives(tmp_path):
    first = GitRepo(tmp_path / "first")
    first.write("handlers.py", long_module("20"))
    first.commit("Add handlers")
    first.write("copy.py", long_module("20"))  # an exact duplicate, dropped in the first run
    first.commit("Copy handlers")
    second = GitRepo(tmp_path / "second")
    second.write("app/handlers.py", long_module("200"))
    second.commit("Add request handlers")
    one_by_one, together = tmp_path / "one-by-one", tmp_path / "together"
    mine([RepoSpec(str(first.path))], one_by_one, workers=1, salt=SALT)
    keys = pq.read_table(next((one_by_one / "_state" / "keys").rglob("*.parquet")))
    assert set(keys["bands"].to_pylist()) == {b""}  # nothing to compare across yet
    mine([RepoSpec(str(second.path))], one_by_one, workers=1, salt=SALT)
    mine([RepoSpec(str(first.path)), RepoSpec(str(second.path))], together, workers=1, salt=SALT)
    assert totals(one_by_one)["file_reasons"] == {"exact_duplicate": 1, "near_duplicate": 1}
    assert sorted_records(one_by_one) == sorted_records(together)


def test_bad_inputs_are_reported_and_the_others_go_on(tmp_path):
    good = small_repo(tmp_path / "good", files=2)
    plain = tmp_path / "plain"
    plain.mkdir()
    empty = GitRepo(tmp_path / "empty")
    report = mine(
        [
            RepoSpec(str(plain)),
            RepoSpec(str(tmp_path / "missing")),
            RepoSpec(str(empty.path)),
            RepoSpec(str(good.path), branch="no-such-branch", name="bad-branch"),
            RepoSpec(str(good.path)),
        ],
        tmp_path / "out",
        workers=1,
        salt=SALT,
    )
    assert report.errors == [
        f"{plain}: not a git repository; pass the path of a repository or a clone URL",
        f"{tmp_path / 'missing'}: no such directory; pass the path of a repository or a clone URL",
        f"{good.path}: revision 'no-such-branch' not found; check the branch or range",
    ]
    assert report.warnings == [f"{empty.path}: repository has no commits; skipped"]
    assert report.manifest["totals"]["records"] == 2


def test_shallow_clones_skip_their_boundary(tmp_path):
    origin = small_repo(tmp_path / "origin", files=4)
    clone = tmp_path / "shallow"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "2", f"file://{origin.path}", str(clone)], check=True
    )
    report = mine([RepoSpec(str(clone))], tmp_path / "out", workers=1, salt=SALT)
    assert "shallow clone" in report.warnings[0]
    assert report.manifest["totals"]["commit_reasons"] == {"shallow_boundary": 1}
    assert report.manifest["totals"]["records"] == 1


def test_missing_objects_are_counted_not_fatal(tmp_path):
    repo = small_repo(tmp_path / "repo", files=2)
    blob = repo.git("rev-parse", "HEAD:pkg/module_1.py")
    (repo.path / ".git" / "objects" / blob[:2] / blob[2:]).unlink()
    report = mine([RepoSpec(str(repo.path))], tmp_path / "out", workers=1, salt=SALT)
    assert report.manifest["totals"]["file_reasons"] == {"missing_object": 1}
    assert report.manifest["totals"]["records"] == 1


def test_clone_urls_are_cached_and_fetched_incrementally(tmp_path):
    origin = small_repo(tmp_path / "origin", files=2)
    cache, out = tmp_path / "cache", tmp_path / "out"
    url = f"file://{origin.path}"
    first = mine([RepoSpec(url)], out, workers=1, salt=SALT, cache_dir=cache)
    assert first.new_commits == 2
    assert len(list(cache.glob("*.git"))) == 1
    origin.write("pkg/late.py", "LATE = True\n")
    origin.commit("Add a late module")
    second = mine([RepoSpec(url)], out, workers=1, salt=SALT, cache_dir=cache)
    assert second.new_commits == 1
    assert len(list(cache.glob("*.git"))) == 1
    assert all(r["repo"].endswith("/origin") for r in read_records(out))


def test_manifest_names_branches_and_ranges(tmp_path):
    repo = small_repo(tmp_path / "repo", files=4)
    base = repo.git("rev-parse", "HEAD~2")
    repo.git("branch", "old", "HEAD~1")
    manifest = tmp_path / "repos.toml"
    manifest.write_text(
        f'[[repo]]\nsource = "repo"\nname = "team/recent"\nrange = "{base}..HEAD"\n\n'
        '[[repo]]\nsource = "repo"\nname = "team/old"\nbranch = "old"\n'
    )
    from zen_coder.history.sources import read_manifest

    specs = read_manifest(manifest)
    out = tmp_path / "out"
    mine(specs, out, MineConfig(dedup_forks=False), workers=1, salt=SALT)
    manifest_out = json.loads((out / "manifest.json").read_text())
    assert manifest_out["repos"]["team/recent"]["commits_seen"] == 2
    assert manifest_out["repos"]["team/old"]["commits_seen"] == 3


def test_ray_executor_runs_the_same_tasks(zoo_repo, tmp_path):
    ray = pytest.importorskip("ray")
    other = small_repo(tmp_path / "other", files=2)
    specs = [RepoSpec(str(zoo_repo.path)), RepoSpec(str(other.path))]
    local, distributed = tmp_path / "local", tmp_path / "ray"
    mine(specs, local, workers=1, salt=SALT)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = mine(specs, distributed, executor="ray", salt=SALT)
    finally:
        ray.shutdown()
    assert report.errors == []
    assert sorted_records(distributed) == sorted_records(local)
    assert content_totals(distributed) == content_totals(local)


def test_copied_dataset_directory_keeps_working(zoo_repo, tmp_path):
    out = tmp_path / "out"
    mine([RepoSpec(str(zoo_repo.path))], out, workers=1, salt=SALT)
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    again = mine([RepoSpec(str(zoo_repo.path))], moved, workers=1, salt=SALT)
    assert again.new_commits == 0
    assert sorted_records(moved) == sorted_records(out)


def test_corrupt_objects_are_counted_not_fatal(tmp_path):
    import zlib

    repo = small_repo(tmp_path / "repo", files=3)
    blob = repo.git("rev-parse", "HEAD~1:pkg/module_1.py")
    path = repo.path / ".git" / "objects" / blob[:2] / blob[2:]
    path.chmod(0o644)
    content = repo.git("cat-file", "blob", blob).encode() + b"\n"
    # A valid header but a truncated body: git announces the blob, then dies while streaming it.
    path.write_bytes(zlib.compress(b"blob %d\0" % len(content) + content)[:-6])
    report = mine([RepoSpec(str(repo.path))], tmp_path / "out", workers=1, salt=SALT)
    assert report.errors == []
    assert report.manifest["totals"]["file_reasons"] == {"missing_object": 1}
    assert report.manifest["totals"]["records"] == 2


def test_credentials_in_a_clone_url_never_reach_messages_or_the_manifest(tmp_path):
    good = small_repo(tmp_path / "good", files=1)
    url = "https://alice:s3cr3t-t0ken-value@example.invalid/org/private.git"
    out = tmp_path / "out"
    report = mine(
        [RepoSpec(url), RepoSpec(str(good.path))],
        out,
        workers=1,
        salt=SALT,
        cache_dir=tmp_path / "cache",
    )
    assert len(report.errors) == 1
    assert report.errors[0].startswith("https://alice:<PASSWORD>@example.invalid/org/private.git:")
    assert "s3cr3t" not in (out / "manifest.json").read_text() + " ".join(report.errors)
