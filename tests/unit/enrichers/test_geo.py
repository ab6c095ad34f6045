"""GeoEnricher over the database geoip.build writes from tests/data/geoip_test.csv."""
from __future__ import annotations

import pytest

from enrichers.geo import GEO_COLUMNS, GeoEnricher
from geoip.build import build_city_database
from geoip.reader import GeoReader
from tests.flowkit import GEO_CSV


@pytest.fixture(scope="module")
def enricher(tmp_path_factory):
    reader = GeoReader(build_city_database(GEO_CSV, tmp_path_factory.mktemp("geo") / "city.mmdb"), cache_size=64)
    yield GeoEnricher(reader)
    reader.close()


def test_values_are_the_columns_in_column_order(enricher):
    for ips in (["81.2.69.142"], ["10.0.0.1", "81.2.69.142"], ["198.51.100.7"], [], ["not an ip"]):
        columns = enricher.columns(ips)
        assert list(columns) == list(GEO_COLUMNS)
        assert enricher.values(ips) == tuple(columns.values())
    assert enricher.values(["10.0.0.1", "81.2.69.142"])[:3] == ("GB", "England", "London")


def test_without_a_database_every_value_is_none():
    assert GeoEnricher(None).values(["81.2.69.142"]) == (None,) * len(GEO_COLUMNS)
