"""`zen-coder serve` as a user starts it: a real process on a free port, a native model, an API
key; it answers editors until interrupted. Bad arguments are one-line errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from zen_coder.cli import main

SOURCE = Path(__file__).resolve().parents[2] / "src"
START_TIMEOUT = 120.0  # seconds: importing torch and loading the model on a busy machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_answers_with_the_key_and_stops_on_interrupt(native_folder):
    port = free_port()
    environment = {**os.environ, "PYTHONPATH": str(SOURCE), "ZEN_CODER_API_KEYS": "k1, k2"}
    command = [sys.executable, "-m", "zen_coder.cli", "serve", "--model", str(native_folder)]
    command += [
        "--port",
        str(port),
        "--slots",
        "2",
        "--model-name",
        "tiny",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, "the server exited"
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k2")
        assert [model.id for model in client.models.list()] == ["tiny"]
        answer = client.completions.create(model="tiny", prompt="def f():\n", max_tokens=4)
        assert answer.usage.completion_tokens <= 4
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=START_TIMEOUT)
    assert process.returncode == 0
    assert f"http://127.0.0.1:{port}" in output and "API keys required" in output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "no/such/folder/here"], "not found"),
        (["--model", "MODEL", "--prefix-share", "0.9", "--suffix-share", "0.3"], "share"),
        (["--model", "MODEL", "--max-tokens", "0"], "max_tokens"),
    ],
)
def test_bad_arguments_are_one_line_errors(native_folder, capsys, arguments, message):
    arguments = [str(native_folder) if part == "MODEL" else part for part in arguments]
    assert main(["serve", *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
