"""Write a small MaxMind-format city database from a CSV of address ranges, so tests never download anything.

CSV (header required; blank lines and lines starting with ``#`` are skipped)::

    start_ip,end_ip,country,region,city,lat,lon,time_zone
    81.2.69.0,81.2.69.255,GB,England,London,51.5142,-0.0931,Europe/London
    2a02:ec0::/29,,DE,Berlin,Berlin,52.52,13.405,Europe/Berlin

``start_ip`` may be a CIDR with ``end_ip`` left empty (a column named ``network`` is read the same way). Ranges
need not be CIDR-aligned. Empty cells are left out of the record, as in the real databases. Records follow the
GeoIP2-City layout (``country.iso_code``, ``subdivisions[0].names.en``, ``city.names.en``, ``location.*``), so
:class:`geoip.reader.GeoReader` reads them exactly like a GeoLite2 or DB-IP file. IPv4 ranges sit in the IPv4
subtree of an IPv6 database, as MaxMind lays them out.

Command line: ``python -m geoip.build ranges.csv out.mmdb``.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Iterable

try:
    from mmdb_writer import MMDBWriter, MmdbF64
    from netaddr import AddrFormatError, IPNetwork, IPRange, IPSet
except ImportError as exc:  # a test/tooling dependency, not needed by the flow itself
    raise ImportError(
        "geoip.build needs the packages 'mmdb-writer' and 'netaddr' (pip install mmdb-writer netaddr)"
    ) from exc

DATABASE_TYPE = "Headwater-Test-City"


class BuildError(ValueError):
    """A CSV row that cannot be turned into a database entry; the message names the line."""


def _addresses(row: dict[str, str]) -> IPSet:
    start = (row.get("network") or row.get("start_ip") or "").strip()
    end = (row.get("end_ip") or "").strip()
    if not start:
        raise ValueError("no start_ip or network")
    if end:
        return IPSet(IPRange(start, end))
    return IPSet(IPNetwork(start))


def city_record(row: dict[str, str]) -> dict[str, Any]:
    """The database record for one CSV row, in the GeoIP2-City layout.

    :param row: a CSV row as read by :class:`csv.DictReader`
    """
    def cell(name: str) -> str:
        return (row.get(name) or "").strip()

    record: dict[str, Any] = {}
    if cell("country"):
        record["country"] = {"iso_code": cell("country"), "names": {"en": cell("country")}}
    if cell("region"):
        record["subdivisions"] = [{"names": {"en": cell("region")}}]
    if cell("city"):
        record["city"] = {"names": {"en": cell("city")}}
    location: dict[str, Any] = {}
    if cell("lat") and cell("lon"):
        location["latitude"] = MmdbF64(float(cell("lat")))
        location["longitude"] = MmdbF64(float(cell("lon")))
    if cell("time_zone"):
        location["time_zone"] = cell("time_zone")
    if location:
        record["location"] = location
    return record


def read_ranges(lines: Iterable[str]) -> list[tuple[IPSet, dict[str, Any]]]:
    """Parse the CSV into ``(addresses, record)`` pairs, reporting every bad line at once.

    :param lines: the CSV text, line by line
    :raises BuildError: listing each line that could not be read
    """
    content = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    entries, problems = [], []
    for number, row in enumerate(csv.DictReader(content), start=2):
        try:
            entries.append((_addresses(row), city_record(row)))
        except (ValueError, TypeError, AddrFormatError) as exc:
            problems.append(f"row {number}: {exc}")
    if problems:
        raise BuildError("cannot build the database:\n" + "\n".join(problems))
    return entries


def build_city_database(csv_path: str | Path, out_path: str | Path) -> Path:
    """Write ``out_path`` (a ``.mmdb``) from the ranges in ``csv_path``.

    :param csv_path: CSV as described in the module docstring
    :param out_path: database to write (overwritten)
    :returns: ``out_path``
    """
    with open(csv_path, newline="", encoding="utf-8") as handle:
        entries = read_ranges(handle)
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=DATABASE_TYPE,
                        languages=["en"], description="Headwater test city database")
    for addresses, record in entries:
        writer.insert_network(addresses, record)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m geoip.build RANGES.csv OUT.mmdb", file=sys.stderr)
        return 2
    try:
        print(build_city_database(args[0], args[1]))
    except (BuildError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
