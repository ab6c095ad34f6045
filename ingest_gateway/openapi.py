"""The OpenAPI 3.1 document served at ``GET /openapi.json``, written by hand to match the handlers."""
from __future__ import annotations

from typing import Any


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _retry(description: str) -> dict[str, Any]:
    out = _error(description)
    out["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}
    return out


def _segment_paths(settings: Any) -> dict[str, Any]:
    """``/v1/batch`` and one path per single call (Segment's Tracking API)."""
    responses = {
        "200": {"description": "the batch is durable; rejected messages are listed with their reasons",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SegmentResponse"}}}},
        "400": _segment_error("malformed request: invalid_body, malformed_json, invalid_utf8, empty_batch, "
                              "compression_invalid, bad_content_length"),
        "401": _segment_error("unauthorized: missing or unknown write key"),
        "403": _segment_error("segment_disabled: no write keys are configured"),
        "413": _segment_error("body_too_large, decompressed_too_large, too_many_events"),
        "415": _segment_error("unsupported_encoding"),
        "429": _segment_error("overloaded", retry=True),
        "503": _segment_error("unavailable: Kafka is down and the spool is full", retry=True),
    }
    encoding = [{"name": "Content-Encoding", "in": "header", "required": False,
                 "schema": {"type": "string", "enum": ["gzip", "deflate", "identity"]}}]
    security = [{"writeKeyAuth": []}, {}]  # {}: the write key may come as writeKey in the body instead
    paths = {"/v1/batch": {"post": {
        "operationId": "segmentBatch", "summary": "Segment-compatible batch of calls", "security": security,
        "parameters": encoding,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/SegmentBatch"}}}},
        "responses": responses}}}
    for call in ("track", "identify", "page", "screen", "group", "alias"):
        paths[f"/v1/{call}"] = {"post": {
            "operationId": f"segment{call.title()}", "summary": f"Segment-compatible {call} call",
            "security": security, "parameters": encoding,
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/SegmentMessage"}}}},
            "responses": responses}}
    return paths


def _segment_error(description: str, retry: bool = False) -> dict[str, Any]:
    out = {"description": description,
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SegmentError"}}}}
    if retry:
        out["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}
    return out


def openapi_document(settings: Any, event_names: list[str]) -> dict[str, Any]:
    """:param settings: for the limits quoted in the document; :param event_names: the registered events"""
    admin = [{"bearerAuth": []}]
    subject = {"name": "subject_id", "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1, "maxLength": 256},
               "description": "a user_id, anonymous_id or device_id"}
    signed_headers = [
        {"name": "X-Headwater-Device", "in": "header", "required": True, "schema": {"type": "string", "maxLength": 128}},
        {"name": "X-Headwater-Timestamp", "in": "header", "required": True,
         "schema": {"type": "string", "pattern": "^[0-9]+$"}, "description": "unix seconds"},
        {"name": "X-Headwater-Signature", "in": "header", "required": True,
         "schema": {"type": "string", "pattern": "^kid=[^,]+,v1=[0-9a-f]{64}$"},
         "description": "kid=<key id>,v1=hex(HMAC-SHA256(HMAC-SHA256(master_key[kid], device_id), "
                        "timestamp + '.' + body as sent))"},
        {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 255},
         "description": "a retry with the same key and body gets the first answer and publishes nothing"},
        {"name": "Content-Encoding", "in": "header", "required": False,
         "schema": {"type": "string", "enum": ["gzip", "deflate", "identity"]}},
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Headwater ingest gateway", "version": "1",
                 "description": "Collects signed, batched analytics events and publishes them to Kafka."},
        "paths": {
            "/analytics/collect": {"post": {
                "operationId": "collect", "summary": "Send a batch of events",
                "parameters": signed_headers,
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/CollectRequest"}}}},
                "responses": {
                    "200": {"description": "per-event results; rejected events are listed with their reasons",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CollectResponse"}}}},
                    "400": _error("malformed request: invalid_body, malformed_json, invalid_utf8, empty_batch, "
                                  "compression_invalid, idempotency_key_invalid, bad_content_length"),
                    "401": _error("signature_missing, signature_malformed, unknown_kid, timestamp_invalid, "
                                  "timestamp_expired, timestamp_in_future, signature_mismatch, signature_replayed, device_invalid"),
                    "409": _error("idempotency_key_in_use: the first request with this key is still running"),
                    "413": _error("body_too_large, decompressed_too_large, too_many_events"),
                    "415": _error("unsupported_encoding"),
                    "422": _error("idempotency_key_reused: same key, different body"),
                    "429": _retry("overloaded: too many requests in flight"),
                    "503": _retry("unavailable: Kafka is down and the spool is full; dependency_unavailable"),
                }}},
            **_segment_paths(settings),
            "/analytics/config": {"get": {
                "operationId": "config", "summary": "What a client should do: mode, limits, rollout",
                "parameters": [{"name": "device_id", "in": "query", "required": False,
                                "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                                "description": "answer for this device: is it in the rollout (enabled)?"}],
                "responses": {"200": {"description": "client configuration", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ClientConfig"}}}},
                    "400": _error("invalid_device_id")}}},
            "/analytics/optout/{subject_id}": {
                "parameters": [subject],
                "get": {"operationId": "getOptOut", "security": admin, "summary": "Is this subject opted out?",
                        "responses": {"200": {"description": "opted out", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/OptOut"}}}},
                            "401": _error("unauthorized"), "403": _error("admin_disabled"), "404": _error("not_found")}},
                "post": {"operationId": "addOptOut", "security": admin, "summary": "Opt a subject out of analytics",
                         "responses": {"201": {"description": "recorded", "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/OptOut"}}}},
                             "200": {"description": "was already recorded", "content": {"application/json": {
                                 "schema": {"$ref": "#/components/schemas/OptOut"}}}},
                             "401": _error("unauthorized"), "403": _error("admin_disabled")}},
                "delete": {"operationId": "removeOptOut", "security": admin, "summary": "Withdraw an opt-out",
                           "responses": {"204": {"description": "removed"}, "401": _error("unauthorized"),
                                         "403": _error("admin_disabled"), "404": _error("not_found")}}},
            "/healthz": {"get": {"operationId": "healthz", "summary": "The process is alive",
                                 "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"operationId": "readyz", "summary": "Kafka reachable and schemas loaded",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text exposition format",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1",
                                                            "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "the gateway's admin_token"},
                                "writeKeyAuth": {"type": "http", "scheme": "basic",
                                                 "description": "user name = a write key, empty password"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "object", "required": ["code", "message"],
                              "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
                    "request_id": {"type": ["string", "null"]}}},
                "Consent": {"type": "object", "properties": {
                    "analytics": {"type": "boolean"}, "marketing": {"type": "boolean"},
                    "personalization": {"type": "boolean"}, "policy_version": {"type": "string"}}},
                "Event": {"type": "object", "required": ["event", "event_id", "timestamp", "properties"],
                          "description": "validated by schemas/envelope.schema.json and schemas/{event}.schema.json",
                          "properties": {"event": {"type": "string", "enum": event_names},
                                         "event_id": {"type": "string", "format": "uuid"},
                                         "timestamp": {"type": "string", "format": "date-time"},
                                         "user_id": {"type": "string"}, "anonymous_id": {"type": "string"},
                                         "device_id": {"type": "string"}, "properties": {"type": "object"},
                                         "context": {"type": "object"},
                                         "consent": {"$ref": "#/components/schemas/Consent"}}},
                "CollectRequest": {"type": "object", "required": ["batch"], "properties": {
                    "sent_at": {"type": "string", "format": "date-time"},
                    "batch": {"type": "array", "minItems": 1, "maxItems": settings.max_batch_events,
                              "items": {"$ref": "#/components/schemas/Event"}},
                    "consent": {"$ref": "#/components/schemas/Consent"}}},
                "CollectResponse": {"type": "object",
                                    "required": ["accepted", "duplicates", "no_consent", "rejected"], "properties": {
                    "accepted": {"type": "integer", "minimum": 0},
                    "duplicates": {"type": "integer", "minimum": 0},
                    "no_consent": {"type": "integer", "minimum": 0},
                    "dark": {"type": "integer", "minimum": 0, "description": "dark mode: valid, not published"},
                    "rejected": {"type": "array", "items": {"type": "object", "required": ["index", "errors"],
                                                            "properties": {
                        "index": {"type": "integer"}, "event_id": {"type": ["string", "null"]},
                        "errors": {"type": "array", "items": {"type": "string"}}}}}}},
                "SegmentMessage": {"type": "object", "description": "a Segment Tracking API call",
                                   "properties": {
                    "type": {"type": "string", "enum": ["track", "identify", "page", "screen", "group", "alias"]},
                    "messageId": {"type": "string"}, "userId": {"type": ["string", "null"]},
                    "anonymousId": {"type": ["string", "null"]}, "event": {"type": "string"},
                    "name": {"type": "string"}, "timestamp": {"type": "string", "format": "date-time"},
                    "properties": {"type": "object"}, "traits": {"type": "object"}, "context": {"type": "object"},
                    "writeKey": {"type": "string"}}},
                "SegmentBatch": {"type": "object", "required": ["batch"], "properties": {
                    "batch": {"type": "array", "minItems": 1,
                              "maxItems": getattr(settings, "segment_max_batch_events", 500),
                              "items": {"$ref": "#/components/schemas/SegmentMessage"}},
                    "sentAt": {"type": "string", "format": "date-time"}, "context": {"type": "object"},
                    "writeKey": {"type": "string"}}},
                "SegmentResponse": {"type": "object", "required": ["success"], "properties": {
                    "success": {"type": "boolean", "const": True},
                    "accepted": {"type": "integer", "minimum": 0}, "duplicates": {"type": "integer", "minimum": 0},
                    "no_consent": {"type": "integer", "minimum": 0}, "dark": {"type": "integer", "minimum": 0},
                    "rejected": {"type": "array", "items": {"type": "object", "properties": {
                        "index": {"type": "integer"}, "event_id": {"type": ["string", "null"]},
                        "message_id": {"type": ["string", "null"]},
                        "errors": {"type": "array", "items": {"type": "string"}}}}}}},
                "SegmentError": {"type": "object", "required": ["success", "code", "message"], "properties": {
                    "success": {"type": "boolean", "const": False}, "code": {"type": "string"},
                    "message": {"type": "string"}, "request_id": {"type": ["string", "null"]}}},
                "ClientConfig": {"type": "object", "properties": {
                    "mode": {"type": "string", "enum": ["live", "dark"]},
                    "edge_proxy_enabled": {"type": "boolean"},
                    "enabled": {"type": "boolean", "description": "send to this edge (for the device asked about)"},
                    "device_id": {"type": "string"}, "rollout_bucket": {"type": "integer", "minimum": 0, "maximum": 9999},
                    "rollout_percent": {"type": "integer", "minimum": 0, "maximum": 100},
                    "max_batch_events": {"type": "integer"}, "max_body_bytes": {"type": "integer"},
                    "max_decompressed_bytes": {"type": "integer"}, "max_event_bytes": {"type": "integer"},
                    "content_encodings": {"type": "array", "items": {"type": "string"}},
                    "signature": {"type": "object"}, "schemas": {"type": "object",
                                                                 "additionalProperties": {"type": "integer"}}}},
                "OptOut": {"type": "object", "properties": {"subject_id": {"type": "string"},
                                                            "opted_out": {"type": "boolean"},
                                                            "since": {"type": "string"}}},
            },
        },
    }
