"""Entry point for ``python -m bytewax.run``, with settings from the environment (``HEADWATER_*``).

- ``python -m bytewax.run flows.run:flow`` — rows printed to stdout until the real sinks are wired in;
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


def parse_outputs(spec: str, settings: Any) -> dict[str, Sink]:
    """``stdout``, ``jsonl:DIR`` or ``kafka:TOPIC``, comma-separated, into named sinks.

    :raises ValueError: for an unknown kind
    """
    sinks: dict[str, Sink] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        kind, _, arg = part.partition(":")
        if kind == "stdout":
            sinks["stdout"] = StdOutSink()
        elif kind == "jsonl" and arg:
            sinks["jsonl"] = JsonLinesSink(arg)
        elif kind == "kafka" and arg:
            sinks[f"kafka_{arg}"] = kafka_rows(settings, arg, f"kafka_{arg}")
        else:
            raise ValueError(f"unknown output {part!r}: use stdout, jsonl:DIR or kafka:TOPIC")
    return sinks


def get_flow(output: str = "stdout", raw_topic: str | None = None, invalid_topic: str | None = None,
             batch_size: int | None = None, batch_timeout_ms: int | None = None,
             plan_tier_table: str | None = None) -> Dataflow:
    """The dataflow with settings from the environment.

    :param output: where rows go (see :func:`parse_outputs`)
    :param raw_topic: input topic (default ``settings.kafka_topic_raw``)
    :param invalid_topic: dead-letter topic (default ``settings.kafka_topic_invalid``)
    :param batch_size: most events per plan-tier batch (default ``settings.flow_batch_size``)
    :param batch_timeout_ms: longest wait for a batch to fill (default ``settings.flow_batch_timeout_ms``)
    :param plan_tier_table: the accounts table (default ``settings.plan_tier_table``)
    """
    from headwater.settings import load_settings
    from schemas.registry import SchemaRegistry
    from flows.dataflow import dead_letter_sink, kafka_source
    from flows.stages import Stages

    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = SchemaRegistry.load()
    return build_flow(
        settings,
        source=kafka_source(settings, raw_topic),
        sinks=parse_outputs(output, settings),
        dead_letters=dead_letter_sink(settings, invalid_topic),
        stages=Stages.from_settings(settings, registry, table=plan_tier_table or settings.plan_tier_table),
        batch_size=batch_size or settings.flow_batch_size,
        batch_timeout=dt.timedelta(milliseconds=batch_timeout_ms or settings.flow_batch_timeout_ms),
    )


def __getattr__(name: str) -> Any:
    # `flows.run:flow` is built on first access, so importing this module has no side effects.
    if name == "flow":
        return get_flow()
    raise AttributeError(name)
