"""End-to-end mining of real git repositories with known ground truth."""

from __future__ import annotations

import gc
import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.gitrepo import GitRepo
from tests.history import zoo
from zen_coder.history.config import MineConfig
from zen_coder.history.pipeline import mine
from zen_coder.history.shards import RECORD_SCHEMA
from zen_coder.history.sources import RepoSpec
from zen_coder.history.store import SCHEMA_VERSION

SALT = b"test-salt"


def read_records(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    rows: list[dict] = []
    for shard in manifest["shards"]:
        rows += pq.read_table(out / shard).to_pylist()
    return rows


def record_keys(rows: list[dict]) -> set[tuple]:
    return {
        (
            row["message"].split("\n")[0],
            row["path"],
            row["change_type"],
            row["language"],
            row["history_position"],
        )
        for row in rows
    }


def everything_written(out: Path) -> str:
    """Every value in every output file, as text, to search for what must not be there."""
    parts = []
    for path in sorted(out.rglob("*")):
        if path.suffix == ".parquet":
            parts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
        elif path.is_file():
            parts.append(path.read_bytes().decode(errors="replace"))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def zoo_repo(tmp_path_factory) -> GitRepo:
    return zoo.build_zoo(tmp_path_factory.mktemp("zoo") / "repo")


@pytest.fixture(scope="module")
def zoo_out(zoo_repo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zoo-out") / "dataset"
    mine([RepoSpec(str(zoo_repo.path))], out, workers=1, salt=SALT)
    return out


def test_every_reason_counted_exactly(zoo_out):
    totals = json.loads((zoo_out / "manifest.json").read_text())["totals"]
    assert totals["commits_seen"] == zoo.EXPECTED_COMMITS
    assert totals["commit_reasons"] == zoo.EXPECTED_COMMIT_REASONS
    assert totals["file_reasons"] == zoo.EXPECTED_FILE_REASONS
    dropped = sum(zoo.EXPECTED_COMMIT_REASONS.values())
    assert totals["commits_kept"] == zoo.EXPECTED_COMMITS - dropped


def test_exactly_the_expected_records_survive(zoo_out):
    rows = read_records(zoo_out)
    assert record_keys(rows) == zoo.EXPECTED_RECORDS
    assert len(rows) == len(zoo.EXPECTED_RECORDS)


def test_nothing_secret_or_personal_is_written(zoo_out):
    text = everything_written(zoo_out)
    for secret in zoo.SECRETS + zoo.EMAILS + ["Ada Lovelace", "dependabot"]:
        assert secret not in text
    settings = next(r for r in read_records(zoo_out) if r["path"] == "settings.py")
    assert "<KEY>" in settings["new_content"]
    assert "<PRIVATE_KEY>" in settings["new_content"]
    assert "<PASSWORD>" in settings["new_content"]
    assert "<EMAIL>" in settings["message"]
    redactions = json.loads((zoo_out / "manifest.json").read_text())["totals"]["redactions"]
    assert redactions == {"email": 2, "key": 1, "password": 1, "private_key": 1}


def test_record_fields(zoo_out, zoo_repo):
    rows = {(r["path"], r["change_type"]): r for r in read_records(zoo_out)}
    rename = rows["calculator.py", "rename"]
    assert rename["old_path"] == "calc.py"
    assert rename["old_content"] == zoo.CALC_REFORMATTED
    assert rename["new_content"] == zoo.CALCULATOR
    assert rename["diff"].startswith("--- a/calc.py\n+++ b/calculator.py\n@@ ")
    assert (rename["lines_added"], rename["lines_deleted"]) == (4, 0)
    assert rename["parent"] == zoo_repo.git("rev-parse", f"{rename['commit']}^")
    assert rename["author_time"].tzinfo is not None
    assert len(rename["author"]) == 32

    added = rows["calc.py", "add"]
    assert added["old_path"] is None and added["old_content"] is None
    assert added["diff"].startswith("--- /dev/null\n+++ b/calc.py\n")

    modified = rows["app.js", "modify"]
    assert modified["old_path"] == "app.js"
    assert "¡Hola, señor! 你好" in modified["new_content"]
    assert modified["old_content"] != modified["new_content"]

    windows = rows["win.c", "add"]
    assert windows["new_content"] == "int main(void)\n{\n    return 0;\n}\n"


def test_parquet_schema_and_manifest(zoo_out):
    manifest = json.loads((zoo_out / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["config"] == MineConfig().content_settings()
    for shard in manifest["shards"]:
        schema = pq.read_schema(zoo_out / shard)
        assert schema.equals(RECORD_SCHEMA, check_metadata=False)
        assert manifest["record_schema"] == {field.name: str(field.type) for field in schema}
        assert schema.metadata[b"zen_coder.schema_version"] == str(SCHEMA_VERSION).encode()
        assert pq.ParquetFile(zoo_out / shard).metadata.row_group(0).column(0).compression == (
            "ZSTD"
        )
    assert manifest["repos"]["repo"]["records"] == len(zoo.EXPECTED_RECORDS)
    assert sum(manifest["totals"]["languages"].values()) == len(zoo.EXPECTED_RECORDS)


def test_hugging_face_datasets_reads_the_output(zoo_out):
    datasets = pytest.importorskip("datasets")
    files = [str(p) for p in sorted((zoo_out / "data").rglob("*.parquet"))]
    dataset = datasets.load_dataset("parquet", data_files=files, split="train")
    assert dataset.num_rows == len(zoo.EXPECTED_RECORDS)
    assert set(dataset.column_names) == set(RECORD_SCHEMA.names)


def numstat(repo: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(commit, path) -> (added, deleted) as `git log --numstat -M` counts them."""
    out = subprocess.run(
        ["git", "log", "--numstat", "-M", "-z", "--format=%x01%H"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.decode()
    counts = {}
    for block in out.split("\x01")[1:]:
        sha, *fields = block.split("\0")
        fields = [f.lstrip("\n") for f in fields]
        while fields:
            entry = fields.pop(0)
            if not entry:
                continue
            added, deleted, path = entry.split("\t")
            if not path:  # a rename: old and new path follow as their own fields
                path = fields[1]
                del fields[:2]
            if added != "-":
                counts[sha, path] = (int(added), int(deleted))
    return counts


def assert_line_counts_match_git(out: Path, repo: Path) -> int:
    expected = numstat(repo)
    checked = 0
    for row in read_records(out):
        if any(p in row["diff"] for p in ("<KEY>", "<PASSWORD>", "<EMAIL>", "<PRIVATE_KEY>")):
            continue  # redaction legitimately changes the line structure
        if row["path"] == "win.c":
            continue  # normalization removed its trailing whitespace
        key = (row["commit"], row["path"])
        assert (row["lines_added"], row["lines_deleted"]) == expected[key], key
        checked += 1
    return checked


def test_line_counts_match_git_numstat(zoo_out, zoo_repo):
    assert assert_line_counts_match_git(zoo_out, zoo_repo.path) >= 12


def test_line_counts_match_git_numstat_on_this_repository(tmp_path):
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        pytest.skip("the project is not a git checkout here")
    out = tmp_path / "own"
    mine([RepoSpec(str(root))], out, workers=1, salt=SALT)
    assert assert_line_counts_match_git(out, root) > 0


SWITCHES = {
    "drop_merge_commits": ["merge_commit"],
    "drop_bot_authors": ["bot_author"],
    "drop_generated_messages": ["generated_message"],
    "drop_vendored": ["vendored"],
    "drop_lockfiles": ["lockfile"],
    "drop_generated_files": ["generated", "generated_header"],
    "drop_minified": ["minified"],
    "drop_extreme_ratios": ["extreme_ratio"],
    "dedup_exact": ["exact_duplicate", "all_duplicates"],
}


@pytest.mark.parametrize("setting", SWITCHES)
def test_each_filter_can_be_switched_off(zoo_repo, tmp_path, setting):
    out = tmp_path / "out"
    config = MineConfig().replace(**{setting: False})
    mine([RepoSpec(str(zoo_repo.path))], out, config, workers=1, salt=SALT)
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    reasons = totals["commit_reasons"] | totals["file_reasons"]
    for reason in SWITCHES[setting]:
        assert reason not in reasons
    if setting in ("drop_merge_commits", "drop_bot_authors"):
        # Their messages ("Merge branch ...", "Bump lodash from ...") are generated ones too.
        assert reasons["generated_message"] == 2
    else:
        assert totals["records"] > len(zoo.EXPECTED_RECORDS)


def test_formatting_only_switched_off_keeps_real_reformatting(zoo_repo, tmp_path):
    out = tmp_path / "out"
    mine([RepoSpec(str(zoo_repo.path))], out, MineConfig(drop_formatting_only=False), salt=SALT)
    kept = {(r["message"], r["path"]) for r in read_records(out)}
    assert ("Reformat calc", "calc.py") in kept
    # A line-ending-only change still vanishes once normalized, and is counted as formatting.
    reasons = json.loads((out / "manifest.json").read_text())["totals"]["file_reasons"]
    assert reasons["formatting_only"] == 1


def test_caps_and_redaction_are_settings(zoo_repo, tmp_path):
    out = tmp_path / "out"
    config = MineConfig(max_files_per_commit=100, redact_secrets=False, redact_emails=False)
    mine([RepoSpec(str(zoo_repo.path))], out, config, workers=1, salt=SALT)
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert "too_many_files" not in totals["commit_reasons"]
    assert totals["redactions"] == {}
    assert zoo.FAKE_AWS_KEY in everything_written(out)


def test_mining_in_process_leaves_every_object_collectable(zoo_repo, tmp_path):
    """Extraction exempts the imported modules from garbage collection while it works, and must
    give that back: one worker mines in the caller's process (the quickstart's, a Ray worker's).
    Checked by hand: with the exemption kept for the process's life, as before, the count here
    was 192,722 after this run, and files the caller dropped were never closed."""
    mine([RepoSpec(str(zoo_repo.path))], tmp_path / "out", MineConfig(), workers=1, salt=b"s")
    assert gc.get_freeze_count() == 0
