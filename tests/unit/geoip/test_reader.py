"""GeoReader against a database that geoip.build writes from tests/data/geoip_test.csv."""
from __future__ import annotations

import gzip
import shutil

import pytest

from geoip.build import BuildError, build_city_database, read_ranges
from geoip.fetch import ATTRIBUTION, GeoFetchError, fetch_dbip_city_lite
from geoip.reader import GeoReader, GeoResult, parse_city_record
from tests.flowkit import GEO_CSV


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    return build_city_database(GEO_CSV, tmp_path_factory.mktemp("geo") / "test-city.mmdb")


@pytest.fixture()
def reader(db_path):
    with GeoReader(db_path, cache_size=128) as r:
        yield r


def test_ipv4_range_resolves_every_column(reader):
    assert reader.lookup("81.2.69.142") == GeoResult("GB", "England", "London", 51.5142, -0.0931, "Europe/London")


def test_ranges_that_are_not_cidr_aligned_cover_exactly_their_addresses(reader):
    # 8.8.4.0 - 8.8.8.255 is not a single CIDR block.
    assert reader.lookup("8.8.4.0").city == "Mountain View"
    assert reader.lookup("8.8.8.255").city == "Mountain View"
    assert reader.lookup("8.8.9.0") is None
    # 89.160.20.112/28 ends at .127
    assert reader.lookup("89.160.20.127").country == "SE"
    assert reader.lookup("89.160.20.128") is None


def test_ipv6_and_ipv4_mapped_addresses(reader):
    assert reader.lookup("2a02:ec0:1::5").city == "Berlin"
    assert reader.lookup("2406:da00:ff00::1").time_zone == "Asia/Tokyo"
    assert reader.lookup("::ffff:81.2.69.1").city == "London"


def test_partial_records_leave_missing_columns_none(reader):
    assert reader.lookup("151.101.1.1") == GeoResult(country="US")
    nl = reader.lookup("185.15.57.3")
    assert (nl.country, nl.region, nl.city) == ("NL", "North Holland", None)


@pytest.mark.parametrize("ip", ["10.1.2.3", "192.168.0.1", "127.0.0.1", "203.0.113.7", "::1", "fe80::1",
                                "2001:db8::1", "not-an-ip", "", "999.1.1.1", "81.2.69.142/24"])
def test_private_reserved_and_malformed_addresses_give_none(reader, ip):
    assert reader.lookup(ip) is None


def test_non_string_input_gives_none(reader):
    assert reader.lookup(None) is None
    assert reader.lookup(12345) is None  # type: ignore[arg-type]


def test_cache_counts_hits_and_misses(reader):
    for _ in range(3):
        reader.lookup("81.2.69.142")
    reader.lookup("8.8.8.8")
    hits, misses = reader.cache_stats()
    assert (hits, misses) == (2, 2)


def test_dbip_lite_layout_names_regions_and_has_no_time_zone():
    # DB-IP City Lite records: names only, no subdivision iso_code, no time_zone.
    record = {"city": {"names": {"en": "Porto"}}, "continent": {"code": "EU", "names": {"en": "Europe"}},
              "country": {"iso_code": "PT", "names": {"en": "Portugal"}},
              "location": {"latitude": 41.15, "longitude": -8.61},
              "subdivisions": [{"names": {"en": "Porto"}}]}
    assert parse_city_record(record) == GeoResult("PT", "Porto", "Porto", 41.15, -8.61, None)


def test_geolite_layout_prefers_english_names():
    record = {"country": {"iso_code": "DE", "names": {"de": "Deutschland", "en": "Germany"}},
              "subdivisions": [{"iso_code": "BE", "names": {"en": "Land Berlin"}}],
              "city": {"names": {"de": "Berlin", "en": "Berlin"}},
              "location": {"latitude": 52.5, "longitude": 13.4, "time_zone": "Europe/Berlin", "accuracy_radius": 20}}
    assert parse_city_record(record) == GeoResult("DE", "Land Berlin", "Berlin", 52.5, 13.4, "Europe/Berlin")
    assert parse_city_record(None) is None
    assert parse_city_record({}) is None


def test_build_reports_every_bad_row():
    with pytest.raises(BuildError) as err:
        read_ranges(["start_ip,end_ip,country", "nonsense,,DE", "1.2.3.4,1.2.3.9,FR", "9.9.9.9,1.1.1.1,US"])
    assert "row 2" in str(err.value) and "row 4" in str(err.value) and "row 3" not in str(err.value)


def test_fetch_reads_a_mirror_and_prints_the_attribution(db_path, tmp_path, capsys):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with open(db_path, "rb") as src, gzip.open(mirror / "dbip-city-lite-2026-11.mmdb.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    path = fetch_dbip_city_lite(tmp_path / "out", "2026-11", base_url=mirror.as_uri())
    assert path.name == "dbip-city-lite-2026-11.mmdb"
    with GeoReader(path) as r:
        assert r.lookup("81.2.69.142").city == "London"
    assert ATTRIBUTION in capsys.readouterr().err


def test_fetch_failure_says_what_to_do(tmp_path):
    with pytest.raises(GeoFetchError) as err:
        fetch_dbip_city_lite(tmp_path, "2026-11", base_url=(tmp_path / "missing").as_uri())
    assert "HEADWATER_GEOIP_DB" in str(err.value) and "dbip-city-lite-2026-11.mmdb.gz" in str(err.value)
    assert not list(tmp_path.glob("*.part"))


def test_fetch_refuses_a_file_that_is_not_a_database(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with gzip.open(mirror / "dbip-city-lite-2026-10.mmdb.gz", "wb") as dst:
        dst.write(b"<html>not found</html>")
    with pytest.raises(GeoFetchError, match="not a MaxMind database"):
        fetch_dbip_city_lite(tmp_path / "out", "2026-10", base_url=mirror.as_uri())
    assert not list((tmp_path / "out").iterdir())
