"""The gateway's Starlette application: :func:`create_app` builds it from the settings.

Routes: ``POST /analytics/collect`` (see :mod:`ingest_gateway.collect`), the Segment-compatible
``POST /v1/batch|track|identify|page|screen|group|alias`` (see :mod:`ingest_gateway.segment`), ``GET /analytics/config``,
``POST|DELETE|GET /analytics/optout/{subject_id}`` (admin, bearer token), ``GET /healthz``, ``GET /readyz``,
``GET /metrics``, ``GET /openapi.json``. Clients (Kafka, Redis, the SQL store, the spool) are opened in the
lifespan, once per worker process.
"""
from __future__ import annotations

import contextlib
import gc
import hmac
import os
from typing import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.settings import Settings, load_settings
from ingest_gateway.collect import collect, error_response, is_collect, serve_collect
from ingest_gateway.consent import MAX_SUBJECT_ID
from ingest_gateway.gateway import Gateway
from ingest_gateway.logs import configure_logging
from ingest_gateway.metrics import CONTENT_TYPE_LATEST
from ingest_gateway.signing import HEADER_DEVICE, MAX_DEVICE_ID
from ingest_gateway.openapi import openapi_document
from ingest_gateway.options import GatewayOptions
from ingest_gateway.rollout import rollout_bucket
from ingest_gateway.segment import segment_call
from schemas.registry import SchemaRegistry


def _json(doc, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status, media_type="application/json")


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def healthz(request: Request) -> Response:
    return _json({"status": "ok"})


async def readyz(request: Request) -> Response:
    gw = _gateway(request)
    schemas_ok = gw.registry is not None and bool(gw.registry.events)
    kafka_ok = await gw.kafka_ready()
    spool = gw.publisher.spool if gw.publisher else None
    spool_ok = spool is not None and spool.pending_bytes < spool.max_bytes
    checks = {"schemas": schemas_ok, "kafka": kafka_ok, "spool": spool_ok}
    ok = all(checks.values())
    return _json({"status": "ready" if ok else "not ready", "checks": checks}, 200 if ok else 503)


async def metrics(request: Request) -> Response:
    return Response(_gateway(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def client_config(request: Request) -> Response:
    """What a client should do. With ``?device_id=`` (or ``X-Headwater-Device``) the answer is for that device:
    ``enabled`` says whether it is in the rollout and should send to this edge."""
    gw = _gateway(request)
    s, o = gw.settings, gw.options
    flags = gw.flags.current()
    doc = {
        "mode": "dark" if flags.dark_mode else "live",
        "edge_proxy_enabled": flags.edge_proxy_enabled,
        "rollout_percent": flags.rollout_percent,
        "max_batch_events": s.max_batch_events,
        "max_body_bytes": s.max_body_bytes,
        "max_decompressed_bytes": s.max_decompressed_bytes,
        "max_event_bytes": s.max_event_bytes,
        "content_encodings": ["gzip", "deflate", "identity"],
        "signature": {"required": gw.require_signature, "skew_seconds": s.signature_skew_seconds},
        "schemas": {name: gw.registry.version(name) for name in gw.registry.events},
    }
    device = request.query_params.get("device_id") or request.headers.get(HEADER_DEVICE)
    if device is not None:
        if not device or len(device) > MAX_DEVICE_ID:
            return error_response(400, "invalid_device_id", f"device_id must be 1-{MAX_DEVICE_ID} characters", None)
        doc["device_id"] = device
        doc["rollout_bucket"] = rollout_bucket(device, o.rollout_salt)
        doc["enabled"] = flags.enabled_for(device, o.rollout_salt)
    else:
        doc["enabled"] = flags.edge_proxy_enabled and flags.rollout_percent == 100
    response = _json(doc)
    # Short-lived: a flag change reaches clients within a minute, without a thundering herd of polls.
    response.headers["Cache-Control"] = "private, max-age=30"
    return response


async def openapi(request: Request) -> Response:
    gw = _gateway(request)
    return _json(openapi_document(gw.settings, gw.registry.events if gw.registry else []))


def _admin_refusal(request: Request) -> Response | None:
    token = request.app.state.gateway.settings.admin_token
    if token is None:
        return error_response(403, "admin_disabled", "no admin_token is configured on this gateway", None)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), str(token.reveal()).encode()):
        response = error_response(401, "unauthorized", "a valid 'Authorization: Bearer <admin token>' is required", None)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    return None


async def optout(request: Request) -> Response:
    refusal = _admin_refusal(request)
    if refusal is not None:
        return refusal
    subject = request.path_params["subject_id"]
    if not subject or len(subject) > MAX_SUBJECT_ID:
        return error_response(400, "invalid_subject", f"subject_id must be 1-{MAX_SUBJECT_ID} characters", None)
    registry = _gateway(request).optouts
    if request.method == "POST":
        created = await registry.add(subject)
        since = await registry.get(subject)
        return _json({"subject_id": subject, "opted_out": True, "since": since}, 201 if created else 200)
    if request.method == "DELETE":
        if await registry.remove(subject):
            return Response(status_code=204)
        return error_response(404, "not_found", "this subject has not opted out", None)
    since = await registry.get(subject)
    if since is None:
        return error_response(404, "not_found", "this subject has not opted out", None)
    return _json({"subject_id": subject, "opted_out": True, "since": since})


def tune_garbage_collector() -> None:
    """Set the collector up for a server process whose requests make many short-lived containers.

    Everything alive once the gateway is open (modules, compiled schemas, clients) is moved out of the
    collector's sight (``gc.freeze``), so the full collections that allocation bursts trigger no longer walk
    it all again; and the youngest generation is collected every 10,000 allocations instead of 700, once
    per few requests rather than several times per request (parsing a 50-event batch alone allocates
    about a thousand dicts, nearly all freed by reference counting anyway). Process-wide: only the server
    entry point calls it, never an embedding application.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(10_000, gen1, gen2)


class GatewayApp(Starlette):
    """The Starlette app, with ``POST /analytics/collect`` served in front of it.

    The hot path goes straight to :func:`ingest_gateway.collect.serve_collect`, skipping routing, the
    middleware stack and request/response objects, which cost a noticeable share of a request's CPU time;
    everything else, including other methods on that path, goes through Starlette as usual.
    """

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and is_collect(scope):
            await serve_collect(self.state.gateway, scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, *, options: GatewayOptions | None = None,
               registry: SchemaRegistry | None = None, server_process: bool = False) -> GatewayApp:
    """Build the gateway app; its clients open when the app starts (lifespan).

    :param settings: the shared settings object
    :param options: gateway options beyond the settings (default: read from ``settings``)
    :param registry: a loaded schema registry (default: the catalogue shipped in ``schemas/``)
    :param server_process: the app owns its process (``headwater gateway``): tune the process-wide garbage
        collector once the gateway is open (see :func:`tune_garbage_collector`)
    """
    configure_logging(settings.log_level)
    gateway = Gateway(settings, options, registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.open()
        if server_process:
            tune_garbage_collector()
        try:
            yield
        finally:
            await gateway.close()

    app = GatewayApp(routes=[
        Route("/analytics/collect", collect, methods=["POST"]),
        Route("/v1/{call}", segment_call, methods=["POST"]),
        Route("/analytics/config", client_config, methods=["GET"]),
        Route("/analytics/optout/{subject_id:path}", optout, methods=["GET", "POST", "DELETE"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ], lifespan=lifespan)
    app.state.gateway = gateway
    return app


def app_from_environment() -> Starlette:
    """Factory for ``uvicorn --factory``: settings from ``HEADWATER_*`` (and ``HEADWATER_CONFIG``)."""
    return create_app(load_settings(os.environ), server_process=True)
