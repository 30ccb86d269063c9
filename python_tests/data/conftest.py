"""Helpers of the data-path tests: small hand-written files under ``tmp_path``."""
from __future__ import annotations

import pytest


@pytest.fixture
def write_csv(tmp_path):
    """``write_csv(text, name="data.csv") -> path``: the text written as it is (no added newline)."""

    def write(text: str, name: str = "data.csv"):
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
