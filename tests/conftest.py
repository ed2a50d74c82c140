"""Keep every test away from the user's home: caches and the author salt live in a temp folder."""

import pytest


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
