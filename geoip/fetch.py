"""Download the default demo database: DB-IP City Lite.

Attribution (required by the licence, and printed on every download):
IP Geolocation by DB-IP (https://db-ip.com), licensed under the Creative Commons Attribution 4.0
International License (CC BY 4.0, https://creativecommons.org/licenses/by/4.0/). The file is used unmodified.

DB-IP publishes one file a month at ``https://download.db-ip.com/free/dbip-city-lite-YYYY-MM.mmdb.gz``.
It uses MaxMind's city layout without time zones, and :class:`geoip.reader.GeoReader` reads it as it is.
Machines without internet access (CI, these development hosts) cannot run this: download the file elsewhere and
point ``HEADWATER_GEOIP_DB`` at the ``.mmdb``; tests build their own database with :mod:`geoip.build`.
"""
from __future__ import annotations

import datetime as dt
import gzip
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import maxminddb

DBIP_BASE_URL = "https://download.db-ip.com/free"
ATTRIBUTION = ("IP Geolocation by DB-IP (https://db-ip.com), licensed under CC BY 4.0 "
               "(https://creativecommons.org/licenses/by/4.0/)")


class GeoFetchError(RuntimeError):
    """The database could not be downloaded or is not a usable MaxMind database."""


def _previous_month(month: str) -> str:
    first = dt.date.fromisoformat(month + "-01")
    return (first - dt.timedelta(days=1)).strftime("%Y-%m")


def fetch_dbip_city_lite(dest_dir: str | Path, month: str | None = None, *, base_url: str = DBIP_BASE_URL,
                         timeout: float = 60.0) -> Path:
    """Download, decompress and check DB-IP City Lite; print the attribution.

    :param dest_dir: where to put ``dbip-city-lite-YYYY-MM.mmdb`` (created when missing)
    :param month: ``YYYY-MM``; by default this month, falling back to last month early in a month before
        DB-IP has published
    :param base_url: where the monthly files are (a mirror, or a ``file://`` directory)
    :param timeout: seconds per network operation
    :returns: the path of the checked ``.mmdb`` file
    :raises GeoFetchError: with the URL tried and what went wrong
    """
    months = [month] if month else [dt.datetime.now(dt.timezone.utc).strftime("%Y-%m")]
    if month is None:
        months.append(_previous_month(months[0]))
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    failures = []
    for candidate in months:
        url = f"{base_url.rstrip('/')}/dbip-city-lite-{candidate}.mmdb.gz"
        target = dest / f"dbip-city-lite-{candidate}.mmdb"
        try:
            _download_gunzipped(url, target, timeout)
        except (urllib.error.URLError, OSError, EOFError, ValueError) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
            continue
        print(f"{target}: {ATTRIBUTION}", file=sys.stderr)
        return target
    raise GeoFetchError(
        "could not download DB-IP City Lite:\n  " + "\n  ".join(failures)
        + "\nThis machine may have no internet access. Download the file on a machine that has, gunzip it, and set "
        "HEADWATER_GEOIP_DB to the .mmdb path (or build a test database with 'python -m geoip.build')."
    )


def _download_gunzipped(url: str, target: Path, timeout: float) -> None:
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            with gzip.GzipFile(fileobj=response) as unzipped:
                shutil.copyfileobj(unzipped, out, 1 << 20)
        try:
            with maxminddb.open_database(partial, maxminddb.MODE_FILE) as db:
                db.metadata()
        except (maxminddb.InvalidDatabaseError, ValueError) as exc:
            raise ValueError(f"downloaded file is not a MaxMind database: {exc}") from None
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
