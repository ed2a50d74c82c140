"""Keep every test away from the user's home: caches and the author salt live in a temp folder.

Tests marked `shared_data` read the shared benchmark copy; tests/shared.py finds it, and skips or
(under CI's `ZEN_CODER_REQUIRE_SHARED=1`) fails them without it."""

import pytest

from tests.shared import MARKER, require_shared


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"{MARKER}: reads the shared benchmark copy (tests/shared.py)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before the test's fixtures, which may already read the data."""
    if item.get_closest_marker(MARKER) is not None:
        require_shared()


@pytest.fixture(autouse=True, scope="session")
def private_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    patch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    yield home
    patch.undo()


# Tiny real models (native and Hugging Face) shared by the inference and evaluation tests.
pytest_plugins = ["tests.models"]
