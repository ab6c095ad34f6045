"""Fixtures shared by the flow's unit tests: the shipped schema catalogue and the small test geo database."""
from __future__ import annotations

import pytest

from geoip.build import build_city_database
from schemas.registry import SchemaRegistry
from tests.flowkit import GEO_CSV


@pytest.fixture(scope="module")
def registry():
    return SchemaRegistry.load()


@pytest.fixture(scope="module")
def geo_db(tmp_path_factory):
    return build_city_database(GEO_CSV, tmp_path_factory.mktemp("geo") / "city.mmdb")
