"""A server started with a repository puts the repository's code and the edited file's history
into the prompt, in the model's layout, for every client shape (Tabby's debug option shows the
prompt); a client can turn retrieval off."""

from __future__ import annotations

import httpx
import pytest

from tests.gitrepo import GitRepo
from tests.serving.running import running
from zen_coder.serving.app import create_app, open_repository
from zen_coder.serving.settings import ServerSettings

GEOMETRY = "def rectangle_area(width, height):\n    return width * height\n"


@pytest.fixture(scope="module")
def url(tmp_path_factory, hf_backend):
    repo = GitRepo(tmp_path_factory.mktemp("checkout") / "shapes")
    repo.write("shapes/geometry.py", GEOMETRY)
    repo.commit("geometry: rectangle area")
    repo.write("app/report.py", "def report(w, h):\n    return 0\n")
    repo.commit("report: a first stub")
    repo.write("app/report.py", "def report(w, h):\n    return w * h\n")
    repo.commit("report: multiply the sides")
    repository = open_repository(repo.path, hf_backend, refresh_seconds=3600)
    repository.refresh()  # the background refresh may still be running: wait for one
    with running(create_app(hf_backend, ServerSettings(), repository)) as url:
        yield url


def tabby_prompt(url: str, **debug) -> str:
    body = {
        "language": "python",
        "segments": {
            "prefix": "def report(w, h):\n    return rectangle_area(",
            "suffix": ")\n",
            "filepath": "app/report.py",
        },
        "debug_options": {"return_prompt": True, **debug},
    }
    return httpx.post(f"{url}/v1/completions", json=body).json()["debug_data"]["prompt"]


def test_the_prompt_holds_the_repositorys_code_and_the_files_history(url):
    """Checked by hand: with the repository left out of the service, this failed."""
    prompt = tabby_prompt(url)
    assert GEOMETRY.strip() in prompt  # the snippet BM25 found for `rectangle_area`
    assert "shapes/geometry.py" in prompt
    assert "report: multiply the sides" in prompt  # the edited file's last change
    assert "<|repo|>shapes" in prompt  # the name mining gives a checkout without remote


def test_a_client_can_turn_retrieval_off(url):
    prompt = tabby_prompt(url, disable_retrieval_augmented_code_completion=True)
    assert "rectangle_area(width" not in prompt
    assert "report: multiply the sides" not in prompt
