"""The quickstart end to end, shortened: every stage, the report, the plot, the ablation."""

from __future__ import annotations

from tests.data.test_prepare import build_history
from zen_coder.quickstart import quickstart


def test_quickstart_writes_a_report_where_training_lowers_the_loss(tmp_path):
    repo = build_history(tmp_path / "repo", commits=20)
    lines: list[str] = []
    result = quickstart(repo.path, tmp_path / "out", steps=6, benchmarks=[], say=lines.append)
    report = result.report.read_text()
    assert result.plot.exists() and result.plot.read_bytes()[:4] == b"\x89PNG"
    assert result.trained["with"] < result.untrained - 0.5
    assert "| untrained |" in report and "| all languages |" in report
    assert "techniques on" in report and "techniques off" in report
    assert "channels shuffled" in report and set(result.trained) == {"with", "shuffled", "without"}
    # One repository: the report says the repository techniques had nothing to use.
    assert "- repository embedding: **inactive**, one repository" in report
    assert "- contrastive loss: **inactive**, one repository" in report
    assert lines[-1].endswith(f"report: {result.report}")
    again = quickstart(repo.path, tmp_path / "out", steps=6, benchmarks=[], say=lines.append)
    assert again.trained == result.trained  # reused: nothing is trained twice
