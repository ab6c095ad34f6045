"""Headwater's Python client SDK: durable, signed, batched delivery of analytics events to the gateway.

Standard library only (orjson is used when installed); nothing here imports the rest of Headwater.
"""
from headwater_client.client import AnalyticsClient
from headwater_client.emitter import AnalyticsEmitter
from headwater_client.sender import FlushResult

__all__ = ["AnalyticsClient", "AnalyticsEmitter", "FlushResult"]
