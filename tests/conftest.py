"""Shared fixtures. Integration tests ask for ``devstack``: it brings the real local services up once per session
(a no-op when ``make test`` already did) and stops at the end only what it started itself."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def devstack():
    from headwater.devstack import Devstack

    stack = Devstack(root=REPO / "var" / "devstack")
    started = stack.up()
    yield stack
    if started:
        stack.down(started)


@pytest.fixture(scope="session")
def stack_settings(devstack):
    """Settings pointing at the running devstack, as a user would get from `headwater devstack up --env`."""
    from headwater.settings import load_settings

    return load_settings(devstack.env())
