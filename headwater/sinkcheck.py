"""Read-side look-ups in the three sinks, for the demo summary and ``headwater smoke``.

Each reader goes through the sink's own writer class (same URL parsing, credentials and filesystem), so a check
reads exactly where the flow writes. Queries are read-only, and none runs a writer's set-up DDL (a check against a
fresh warehouse must not create its tables).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable

SINKS = ("lake", "clickhouse", "snowflake")


@dataclass
class SinkCount:
    sink: str
    rows: int | None = None
    distinct_event_ids: int | None = None
    error: str | None = None


def _quote_list(values: Iterable[str]) -> str:
    out = []
    for v in values:
        if not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError(f"not an event id: {v!r}")
        out.append(f"'{v}'")
    return ",".join(out)


class SinkReader:
    """Read access to the sinks that ``settings`` point at. Close it when done (chdb holds a path lock)."""

    def __init__(self, settings: Any, sinks: Iterable[str] = SINKS):
        self.settings = settings
        self.sinks = tuple(sinks)
        unknown = set(self.sinks) - set(SINKS)
        if unknown:
            raise ValueError(f"unknown sink(s) {', '.join(sorted(unknown))}; use {', '.join(SINKS)}")
        self._writers: dict[str, Any] = {}

    def writer(self, sink: str) -> Any:
        if sink not in self._writers:
            if sink == "lake":
                from sinks.s3_parquet import ParquetLakeWriter
                self._writers[sink] = ParquetLakeWriter.from_settings(self.settings)
            elif sink == "clickhouse":
                from sinks.clickhouse import ClickHouseWriter
                self._writers[sink] = ClickHouseWriter.from_settings(self.settings)
            else:
                from sinks.snowflake import SnowflakeWriter
                self._writers[sink] = SnowflakeWriter.from_settings(self.settings)
        return self._writers[sink]

    # --- counts ----------------------------------------------------------------------------
    def count(self, sink: str) -> SinkCount:
        """Rows and distinct event ids in ``sink`` (ClickHouse counted with FINAL); errors are reported, not raised."""
        try:
            w = self.writer(sink)
            if sink == "lake":
                try:
                    ids = w.read_table(columns=["event_id"]).column("event_id")
                except FileNotFoundError:
                    return SinkCount(sink, 0, 0)
                return SinkCount(sink, len(ids), len(ids.unique()))
            if sink == "clickhouse":
                return SinkCount(sink, w.count_final(), w.distinct_event_ids())
            rows, distinct = w.read(f"SELECT COUNT(*), COUNT(DISTINCT EVENT_ID) FROM {w.table}")[0]
            return SinkCount(sink, int(rows), int(distinct))
        except Exception as exc:  # a summary line per sink, whatever went wrong
            return SinkCount(sink, error=f"{type(exc).__name__}: {exc}")

    # --- look-ups ----------------------------------------------------------------------------
    def find(self, sink: str, event_ids: list[str], day: dt.date | None = None) -> dict[str, int]:
        """How many rows each of ``event_ids`` has in ``sink`` (absent ids are left out).

        :param day: the events' ``event_date``, when known: the lake then reads one partition only
        """
        if not event_ids:
            return {}
        w = self.writer(sink)
        if sink == "lake":
            import pyarrow.compute as pc
            import pyarrow.dataset as ds

            wanted = ds.field("event_id").isin(event_ids)
            if day is not None:
                wanted = wanted & (ds.field("event_date") == day)
            try:
                table = w.dataset().to_table(columns=["event_id"], filter=wanted)
            except FileNotFoundError:
                return {}
            counts = pc.value_counts(table.column("event_id")).to_pylist()
            return {c["values"]: c["counts"] for c in counts}
        ids = _quote_list(event_ids)
        if sink == "clickhouse":
            rows = w.query(f"SELECT event_id, count() FROM {w.qualified_table} FINAL WHERE event_id IN ({ids}) "
                           f"GROUP BY event_id")
        else:
            rows = w.read(f"SELECT EVENT_ID, COUNT(*) FROM {w.table} WHERE EVENT_ID IN ({ids}) GROUP BY EVENT_ID")
        return {str(r[0]): int(r[1]) for r in rows}

    def rows(self, sink: str, event_ids: list[str], columns: list[str]) -> list[dict[str, Any]]:
        """Whole rows (the named columns) of ``event_ids`` from ``sink``, for showing what was stored."""
        w = self.writer(sink)
        if sink == "lake":
            import pyarrow.dataset as ds

            table = w.dataset().to_table(columns=columns, filter=ds.field("event_id").isin(event_ids))
            return table.to_pylist()
        ids = _quote_list(event_ids)
        if sink == "clickhouse":
            cols = ", ".join(f"`{c}`" for c in columns)
            result = w.query(f"SELECT {cols} FROM {w.qualified_table} FINAL WHERE event_id IN ({ids})")
        else:
            cols = ", ".join(c.upper() for c in columns)
            result = w.read(f"SELECT {cols} FROM {w.table} WHERE EVENT_ID IN ({ids})")
        return [dict(zip(columns, r)) for r in result]

    def close(self) -> None:
        for w in self._writers.values():
            try:
                w.close()
            except Exception:
                pass
        self._writers.clear()

    def __enter__(self) -> SinkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
