"""The short soak runs for minutes: marked ``soak`` so that a quick run can leave it out
(``pytest -m "not soak"``)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: a load held for minutes (tests/soak)")
