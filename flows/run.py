"""Entry point for ``python -m bytewax.run``, with settings from the environment (``HEADWATER_*``).

- ``python -m bytewax.run flows.run:flow`` — rows to ``HEADWATER_FLOW_OUTPUTS`` (default ``all``: lake, ClickHouse,
  Snowflake);
- ``python -m bytewax.run "flows.run:get_flow(output='jsonl:/tmp/rows', raw_topic='my.raw')"`` — the factory, with
  its arguments as Python literals (Bytewax parses them); ``headwater flow`` builds this for you.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.outputs import Sink

from flows.dataflow import build_flow
from flows.outputs import JsonLinesSink, kafka_rows


#: What ``all`` stands for: every warehouse-side destination.
ALL_OUTPUTS = ("lake", "clickhouse", "snowflake")
LAKE_BATCH_ROWS = 20_000


def _writer_factory(kind: str, settings: Any, arg: str) -> Any:
    """A zero-argument builder of the writer behind ``kind``. Modules are imported when the writer is built, so an
    output whose client library (or module) is missing only fails when it is asked for."""
    if kind == "lake":
        def make_lake() -> Any:
            from sinks.s3_parquet import ParquetLakeWriter

            return ParquetLakeWriter.from_settings(settings.model_copy(update={"s3_url": arg}) if arg else settings)
        return make_lake
    module = {"clickhouse": "sinks.clickhouse", "snowflake": "sinks.snowflake"}[kind]
    cls = {"clickhouse": "ClickHouseWriter", "snowflake": "SnowflakeWriter"}[kind]

    def make() -> Any:
        import importlib

        return getattr(importlib.import_module(module), cls).from_settings(settings)
    return make


def parse_outputs(spec: str, settings: Any) -> dict[str, Sink]:
    """Comma-separated outputs into named sinks: ``stdout``, ``jsonl:DIR``, ``kafka:TOPIC``, ``lake`` (or
    ``lake:URL`` to override ``s3_url``), ``clickhouse``, ``snowflake``, and ``all`` for the last three.

    :raises ValueError: for an unknown kind
    """
    from flows.writer_sink import DEFAULT_BATCH_ROWS, WriterSink

    sinks: dict[str, Sink] = {}
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    parts = [q for p in parts for q in (ALL_OUTPUTS if p == "all" else (p,))]
    for part in parts:
        kind, _, arg = part.partition(":")
        if kind == "stdout":
            sinks["stdout"] = StdOutSink()
        elif kind == "jsonl" and arg:
            sinks["jsonl"] = JsonLinesSink(arg)
        elif kind == "kafka" and arg:
            sinks[f"kafka_{arg}"] = kafka_rows(settings, arg, f"kafka_{arg}")
        elif kind in ALL_OUTPUTS and (kind == "lake" or not arg):
            # Lake objects are rewritten by every batch that touches them (see sinks.s3_parquet): bigger batches.
            batch_rows = LAKE_BATCH_ROWS if kind == "lake" else DEFAULT_BATCH_ROWS
            sinks[kind] = WriterSink(kind, _writer_factory(kind, settings, arg), batch_rows=batch_rows)
        else:
            raise ValueError(f"unknown output {part!r}: use stdout, jsonl:DIR, kafka:TOPIC, lake[:URL], clickhouse, "
                             f"snowflake or all")
    return sinks


def get_flow(output: str | None = None, raw_topic: str | None = None, invalid_topic: str | None = None,
             batch_size: int | None = None, batch_timeout_ms: int | None = None,
             plan_tier_table: str | None = None) -> Dataflow:
    """The dataflow with settings from the environment.

    :param output: where rows go (see :func:`parse_outputs`; default ``settings.flow_outputs``)
    :param raw_topic: input topic (default ``settings.kafka_topic_raw``)
    :param invalid_topic: dead-letter topic (default ``settings.kafka_topic_invalid``)
    :param batch_size: most events per plan-tier batch (default ``settings.flow_batch_size``)
    :param batch_timeout_ms: longest wait for a batch to fill (default ``settings.flow_batch_timeout_ms``)
    :param plan_tier_table: the accounts table (default ``settings.plan_tier_table``)
    """
    from headwater.settings import load_settings
    from schemas.registry import SchemaRegistry
    from flows.dataflow import dead_letter_sink, kafka_source
    from flows.runtime import settle_heap
    from flows.stages import Stages

    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = SchemaRegistry.load()
    flow = build_flow(
        settings,
        source=kafka_source(settings, raw_topic),
        sinks=parse_outputs(output or settings.flow_outputs, settings),
        dead_letters=dead_letter_sink(settings, invalid_topic),
        stages=Stages.from_settings(settings, registry, table=plan_tier_table or settings.plan_tier_table),
        batch_size=batch_size or settings.flow_batch_size,
        batch_timeout=dt.timedelta(milliseconds=batch_timeout_ms or settings.flow_batch_timeout_ms),
    )
    settle_heap()  # this builds the process's flow: what exists now lives as long as the process
    return flow


def __getattr__(name: str) -> Any:
    # `flows.run:flow` is built on first access, so importing this module has no side effects.
    if name == "flow":
        return get_flow()
    raise AttributeError(name)
