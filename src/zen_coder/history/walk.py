"""The history walk: one repository's commits, oldest first, judged at commit level and batched.

The walk runs in the process that coordinates a repository. It reads one `git log --raw` stream,
gives every changed file its history position, applies the commit-level filters that need no file
contents, and groups the commits into batches for the extractors. It holds one counter per path,
never the history itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from zen_coder.history import filters
from zen_coder.history.config import MineConfig
from zen_coder.history.gitio import ZERO_OID, BlobReader, LogStream, RawChange, RawCommit
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
    # Cut the commits into this many batches of about equal work once all are walked (0: cut
    # batches of commits_per_batch as the walk goes).
    batches: int = 0


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


def positioned(
    commits: Iterable[RawCommit], boundary: set[str], positions: HistoryPositions
) -> Iterator[tuple[RawCommit, list[int]]]:
    """Each commit with its changed files' history positions. A commit on a shallow clone's
    boundary shows its whole tree as added: its files get position 0 and count nothing.
    Mining and serving (`zen_coder.inference.repository`) both count through here, so the time
    channel a model sees at inference is the one it was trained with."""
    for commit in commits:
        counted = commit.sha not in boundary
        yield commit, positions.advance(commit) if counted else [0] * len(commit.changes)


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
    """Batches of the commits not mined yet, in commit order, of at most `commits_per_batch`.

    They are cut as the walk goes, or, when `plan.batches` is set, once the whole history is
    walked, into that many batches of about the same work (see `_balanced`).
    `on_skip(n)` is told about commits skipped because an earlier run already mined them.
    """
    jobs = _commit_jobs(repo, plan, on_skip)
    if plan.batches:
        yield from _balanced(repo, plan, list(jobs))
        return
    batch: list[CommitJob] = []
    first_index = 0
    for index, job in jobs:
        if not batch:
            first_index = index
        batch.append(job)
        if len(batch) >= plan.config.commits_per_batch:
            yield _batch(repo, plan, first_index, batch)
            batch = []
    if batch:
        yield _batch(repo, plan, first_index, batch)


def _commit_jobs(repo: Repository, plan: WalkPlan, on_skip) -> Iterator[tuple[int, CommitJob]]:
    """Each commit not mined yet, with its position in the history, judged at commit level."""
    config = plan.config
    boundary = shallow_boundary(repo.git_dir)
    positions = HistoryPositions()
    stream = LogStream(repo.git_dir, repo.revision, rename_limit=4 * config.max_files_per_commit)
    try:
        for index, (commit, commit_positions) in enumerate(positioned(stream, boundary, positions)):
            if commit.sha in plan.done:
                if on_skip is not None:
                    on_skip(1)
                continue
            drop, message = commit_verdict(commit, plan, boundary)
            yield (
                index,
                CommitJob(
                    sha=commit.sha,
                    parent=commit.parents[0] if commit.parents else None,
                    author_time=commit.author_time,
                    committer_time=commit.committer_time,
                    author=author_hash(commit.author_email, commit.author_name, plan.salt),
                    message=message,
                    changes=list(zip(commit.changes, commit_positions, strict=True)),
                    drop=drop,
                ),
            )
    finally:
        stream.close()


def _balanced(
    repo: Repository, plan: WalkPlan, jobs: list[tuple[int, CommitJob]]
) -> Iterator[BatchJob]:
    """The commits cut into `plan.batches` runs of about the same work, each at most
    `commits_per_batch` long.

    A short history fills only a few batches, and workers that finish early wait for the one
    that got the most work. Work is counted in changed files of the commits that are kept at
    commit level: what reading, checking, diffing and writing a record costs grows with them.
    """
    limit = plan.config.commits_per_batch
    weights = _work(repo, [job for _, job in jobs])
    share = sum(weights) / plan.batches
    batch: list[CommitJob] = []
    first_index = done = cuts = 0
    for (index, job), weight in zip(jobs, weights, strict=True):
        if not batch:
            first_index = index
        batch.append(job)
        done += weight
        if len(batch) >= limit or done >= share * (cuts + 1):
            yield _batch(repo, plan, first_index, batch)
            batch = []
            cuts += 1
    if batch:
        yield _batch(repo, plan, first_index, batch)


# What a changed file costs besides its bytes (a record's bookkeeping), in bytes.
_CHANGE_BYTES = 4096


def _work(repo: Repository, jobs: list[CommitJob]) -> list[int]:
    """An estimate of each commit's extraction work: the bytes of its changed files' two
    versions, read, checked, cleaned, diffed and written (one `cat-file --batch-check` pass)."""
    oids = {
        oid
        for job in jobs
        if not job.drop
        for change, _ in job.changes
        for oid in (change.old_oid, change.new_oid)
        if oid != ZERO_OID
    }
    reader = BlobReader(repo.git_dir)
    try:
        sizes = reader.sizes(sorted(oids))
    finally:
        reader.close()
    return [
        1
        if job.drop
        else sum(
            _CHANGE_BYTES + (sizes.get(change.old_oid) or 0) + (sizes.get(change.new_oid) or 0)
            for change, _ in job.changes
        )
        for job in jobs
    ]


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
