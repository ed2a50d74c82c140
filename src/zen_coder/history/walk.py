"""The history walk: one repository's commits, oldest first, judged at commit level and batched.

The walk runs in the process that coordinates a repository. It reads one `git log --raw` stream,
gives every changed file its history position, applies the commit-level filters that need no file
contents, and groups the commits into batches for the extractors. It holds one counter per path,
never the history itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from zen_coder.history import filters
from zen_coder.history.config import MineConfig
from zen_coder.history.gitio import LogStream, RawChange, RawCommit
from zen_coder.history.sources import Repository, shallow_boundary


@dataclass(slots=True)
class CommitJob:
    """A commit as the walk hands it over: metadata, changes with history positions, verdict."""

    sha: str
    parent: str | None
    author_time: int
    committer_time: int
    author: str
    message: str
    changes: list[tuple[RawChange, int]]
    drop: str | None = None


@dataclass
class BatchJob:
    repo: str
    repo_key: str
    git_dir: str
    out: str
    shard: str
    index: int
    config: MineConfig
    commits: list[CommitJob]
    near_dedup: bool = True  # compute near-duplicate keys: the dataset spans repositories
    run: str = ""  # identifies the mining run, whose earlier shards this batch dedups against
    repo_ranks: dict[str, int] = field(default_factory=dict)  # repository order of the run


def author_hash(email: str, name: str, salt: bytes) -> str:
    """A salted identity: the same person gets the same hash, and no name or email is stored."""
    identity = (email.strip().lower() or name.strip()).encode()
    return hashlib.blake2b(identity, key=salt[:64], digest_size=16).hexdigest()


@dataclass
class WalkPlan:
    """What a walk needs besides the repository: settings, prior progress and fork exclusions."""

    config: MineConfig
    salt: bytes
    out: str
    done: frozenset[str] = frozenset()
    excluded: frozenset[str] = frozenset()
    near_dedup: bool = True
    run: str = ""
    repo_ranks: dict[str, int] = field(default_factory=dict)


class HistoryPositions:
    """Counts changes per path in commit order; a rename carries its file's count along."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def advance(self, commit: RawCommit) -> list[int]:
        positions = []
        for change in commit.changes:
            previous = self.counts.pop(change.old_path, 0) if change.status == "R" else 0
            position = max(previous, self.counts.get(change.path, 0)) + 1
            self.counts[change.path] = position
            positions.append(position)
        return positions


def commit_verdict(commit: RawCommit, plan: WalkPlan, boundary: set[str]) -> tuple[str | None, str]:
    """The commit-level drop reason (None to keep) and the decoded message."""
    config = plan.config
    if commit.sha in plan.excluded:
        return "fork_duplicate", ""
    if len(commit.parents) > 1 and config.drop_merge_commits:
        return "merge_commit", ""
    if commit.sha in boundary:
        return "shallow_boundary", ""
    try:
        message = commit.message.decode("utf-8").rstrip()
    except UnicodeDecodeError:
        return "undecodable_message", ""
    if config.drop_bot_authors and filters.is_bot_author(commit.author_name, commit.author_email):
        return "bot_author", message
    if config.drop_generated_messages and filters.is_generated_message(message):
        return "generated_message", message
    if len(commit.changes) > config.max_files_per_commit:
        return "too_many_files", message
    return None, message


def walk(repo: Repository, plan: WalkPlan, on_skip=None) -> Iterator[BatchJob]:
    """Batches of the commits not mined yet, in commit order.

    `on_skip(n)` is told about commits skipped because an earlier run already mined them.
    """
    config = plan.config
    boundary = shallow_boundary(repo.git_dir)
    positions = HistoryPositions()
    stream = LogStream(repo.git_dir, repo.revision, rename_limit=4 * config.max_files_per_commit)
    batch: list[CommitJob] = []
    first_index = 0
    try:
        for index, commit in enumerate(stream):
            counted = commit.sha not in boundary
            commit_positions = positions.advance(commit) if counted else [0] * len(commit.changes)
            if commit.sha in plan.done:
                if on_skip is not None:
                    on_skip(1)
                continue
            drop, message = commit_verdict(commit, plan, boundary)
            if not batch:
                first_index = index
            batch.append(
                CommitJob(
                    sha=commit.sha,
                    parent=commit.parents[0] if commit.parents else None,
                    author_time=commit.author_time,
                    committer_time=commit.committer_time,
                    author=author_hash(commit.author_email, commit.author_name, plan.salt),
                    message=message,
                    changes=list(zip(commit.changes, commit_positions, strict=True)),
                    drop=drop,
                )
            )
            if len(batch) >= config.commits_per_batch:
                yield _batch(repo, plan, first_index, batch)
                batch = []
        if batch:
            yield _batch(repo, plan, first_index, batch)
    finally:
        stream.close()


def _batch(repo: Repository, plan: WalkPlan, index: int, commits: list[CommitJob]) -> BatchJob:
    return BatchJob(
        repo=repo.name,
        repo_key=repo.key,
        git_dir=str(repo.git_dir),
        out=plan.out,
        shard=f"{index:09d}-{commits[0].sha[:12]}",
        index=index,
        config=plan.config,
        commits=commits,
        near_dedup=plan.near_dedup,
        run=plan.run,
        repo_ranks=plan.repo_ranks,
    )
