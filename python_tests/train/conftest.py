import pytest


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Generators and loaders cache into a per-session directory, never the user's."""
    monkeypatch.setenv("MTLK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
