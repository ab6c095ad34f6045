"""One typed settings object for every Headwater process.

Sources, highest precedence first:

1. ``HEADWATER_<NAME>`` environment variables;
2. ``HEADWATER_<NAME>_FILE``: the value is read from that file (for secrets mounted by Kubernetes);
3. an optional TOML file (``--config`` or ``HEADWATER_CONFIG``), whose tables are flattened
   (``[kafka] brokers = ...`` sets ``kafka_brokers``);
4. the defaults below, which point at the embedded demo stack.

Everything is validated at start-up and every problem is reported in one :class:`SettingsError`.
Secrets are held in :class:`Secret` and never appear in ``repr``, logs or :meth:`Settings.describe`.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "HEADWATER_"
CONFIG_ENV = "HEADWATER_CONFIG"

TOPIC_RAW = "analytics.events.raw"
TOPIC_REJECTED = "analytics.events.rejected"
TOPIC_INVALID = "analytics.events.invalid"
TOPICS = (TOPIC_RAW, TOPIC_REJECTED, TOPIC_INVALID)


class SettingsError(Exception):
    """Raised when settings are invalid; ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in problems))


class Secret:
    """A value that must never be printed. ``reveal()`` is the only way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: Any):
        self._value = value

    def reveal(self) -> Any:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", repr(type(self._value))))


@dataclass(frozen=True)
class PiiSalt:
    """A PII hashing salt, valid for the events of one quarter (plus an overlap after rotation).

    :param salt_id: the quarter it belongs to, e.g. ``2026Q4``; recorded next to each hash as ``pii_salt_id``
    :param key: the salt bytes
    :param valid_from: first day (inclusive) on which events are hashed under it
    :param valid_until: last day (inclusive); later than the quarter's end while a rotation overlap lasts
    """

    salt_id: str
    key: bytes
    valid_from: dt.date
    valid_until: dt.date

    def __repr__(self) -> str:
        return f"PiiSalt({self.salt_id}, {self.valid_from}..{self.valid_until}, key=****)"


_QUARTER = re.compile(r"^(\d{4})Q([1-4])$")


def quarter_bounds(salt_id: str) -> tuple[dt.date, dt.date]:
    """First and last day of the quarter named like ``2026Q4``."""
    m = _QUARTER.match(salt_id)
    if not m:
        raise ValueError(f"salt id {salt_id!r} is not a quarter like 2026Q4")
    year, q = int(m.group(1)), int(m.group(2))
    start = dt.date(year, 3 * q - 2, 1)
    end = dt.date(year + (q == 4), 1 if q == 4 else 3 * q + 1, 1) - dt.timedelta(days=1)
    return start, end


def quarter_of(day: dt.date) -> str:
    return f"{day.year}Q{(day.month - 1) // 3 + 1}"


def _b64(value: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if len(raw) < 16:
        raise ValueError(f"{what} is {len(raw)} bytes; at least 16 are required")
    return raw


def _entries(value: str) -> list[str]:
    """Split a list given as commas and/or lines, ignoring blanks and ``#`` comments."""
    out = []
    for line in value.splitlines():
        line = line.split("#", 1)[0]
        out.extend(part.strip() for part in line.split(",") if part.strip())
    return out


def parse_hmac_keys(value: str) -> dict[str, bytes]:
    """``kid1:BASE64,kid2:BASE64`` → ``{kid: key}``."""
    keys: dict[str, bytes] = {}
    for entry in _entries(value):
        kid, sep, b64 = entry.partition(":")
        kid = kid.strip()
        if not sep or not kid or not b64:
            raise ValueError(f"entry {kid or '?'!r} must look like KID:BASE64")
        if kid in keys:
            raise ValueError(f"key id {kid!r} appears twice")
        keys[kid] = _b64(b64, f"key {kid!r}")
    return keys


def parse_pii_salts(value: str, overlap_days: int) -> list[PiiSalt]:
    """``2026Q4:BASE64[:FROM:UNTIL]`` entries → salts; without dates a salt covers its quarter
    plus ``overlap_days`` after it (so events arriving late in a rotation can be hashed under both)."""
    salts: list[PiiSalt] = []
    for entry in _entries(value):
        parts = [p.strip() for p in entry.split(":")]
        if len(parts) not in (2, 4):
            raise ValueError(f"entry {parts[0]!r} must look like QUARTER:BASE64 or QUARTER:BASE64:FROM:UNTIL")
        salt_id = parts[0]
        start, end = quarter_bounds(salt_id)
        key = _b64(parts[1], f"salt {salt_id!r}")
        if len(parts) == 4:
            try:
                start, end = dt.date.fromisoformat(parts[2]), dt.date.fromisoformat(parts[3])
            except ValueError:
                raise ValueError(f"salt {salt_id!r}: validity dates must be YYYY-MM-DD") from None
            if end < start:
                raise ValueError(f"salt {salt_id!r}: valid_until is before valid_from")
        else:
            end = end + dt.timedelta(days=overlap_days)
        if any(s.salt_id == salt_id for s in salts):
            raise ValueError(f"salt {salt_id!r} appears twice")
        salts.append(PiiSalt(salt_id, key, start, end))
    return sorted(salts, key=lambda s: s.valid_from)


def _kv_pairs(value: str) -> dict[str, str]:
    out = {}
    for entry in _entries(value):
        k, sep, v = entry.partition("=")
        if not sep or not k.strip():
            raise ValueError(f"{entry!r} must look like key=value")
        out[k.strip()] = v.strip()
    return out


# Fields holding secrets: wrapped in Secret, masked in describe(), and readable from *_FILE.
SECRET_FIELDS = {
    "hmac_keys",
    "pii_salts",
    "write_keys",
    "admin_token",
    "audit_hash_key",
    "kafka_sasl_password",
    "s3_secret_access_key",
    "clickhouse_password",
    "snowflake_password",
    "snowflake_private_key",
    "postgres_url",
    "redis_url",
}


_CHOICES = {
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR"),
    "kafka_security_protocol": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
}

#: Settings that take one of a few lower-case words, written exactly.
_WORDS = {"gateway_allocator": ("jemalloc", "system"), "ip_handling": ("drop", "truncate")}


class Settings(BaseModel):
    """Every setting of every Headwater process. Field ``x`` is ``HEADWATER_X`` in the environment."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    # --- local state -------------------------------------------------------------------
    data_dir: Path = Field(Path("var"), description="where local state lives: spool, recovery, embedded stores")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    # --- Kafka -------------------------------------------------------------------------
    kafka_brokers: str = Field("127.0.0.1:29092", description="bootstrap servers, host:port[,host:port]")
    kafka_security_protocol: str = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    kafka_sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER")
    kafka_sasl_username: str | None = None
    kafka_sasl_password: Secret | None = None
    kafka_ssl_ca_location: Path | None = Field(None, description="CA bundle for SSL/SASL_SSL")
    kafka_options: dict[str, str] = Field(
        default_factory=dict, description="extra librdkafka settings, 'key=value,key=value' or a TOML table"
    )
    kafka_topic_raw: str = TOPIC_RAW
    kafka_topic_rejected: str = TOPIC_REJECTED
    kafka_topic_invalid: str = TOPIC_INVALID

    # --- S3 / lake -----------------------------------------------------------------------
    s3_url: str = Field("var/lake", description="lake root: s3://bucket/prefix or a local directory")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto, R2)")
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: Secret | None = None

    # --- ClickHouse ----------------------------------------------------------------------
    clickhouse_url: str = Field(
        "chdb://var/chdb",
        description="clickhouse://host:9000/db, clickhouses:// for TLS, or embedded chdb:///abs/path, chdb://rel/path")
    clickhouse_user: str = "default"
    clickhouse_password: Secret | None = None
    clickhouse_secure: bool = Field(False, description="TLS on the native port (9440)")

    # --- Snowflake -----------------------------------------------------------------------
    snowflake_url: str = Field(
        "snowflake://headwater@fakesnow/ANALYTICS/PUBLIC?host=127.0.0.1&port=29100&protocol=http",
        description="snowflake://user@account/DATABASE/SCHEMA?warehouse=..&role=..&host=..&port=..",
    )
    snowflake_password: Secret | None = None
    snowflake_private_key: Secret | None = Field(None, description="PEM private key for key-pair auth")

    # --- OLTP, audit, idempotency ----------------------------------------------------------
    redis_url: Secret | None = Field(None, description="redis://host:6379/0; unset = in-process dedup")
    postgres_url: Secret | None = Field(None, description="postgresql://...; unset = embedded SQLite")

    # --- Gateway -------------------------------------------------------------------------
    hmac_keys: Secret = Field(default_factory=lambda: Secret({}), description="KID:BASE64,... master keys")
    write_keys: Secret = Field(default_factory=lambda: Secret(()), description="Segment write keys, key1,key2")
    admin_token: Secret | None = Field(None, description="bearer token for the opt-out registry API")
    signature_skew_seconds: int = Field(300, ge=1, le=3600)
    max_batch_events: int = Field(50, ge=1, le=50)
    max_body_bytes: int = Field(512 * 1024, ge=1024)
    max_decompressed_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_event_bytes: int = Field(32 * 1024, ge=256)
    dedup_window_seconds: int = Field(86_400, ge=1)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    gateway_id: str | None = Field(None, description="written into every raw record; default gw-<hostname>")
    gateway_dark_mode: bool = Field(False, description="validate, count and audit, publish nothing")
    gateway_edge_proxy_enabled: bool = Field(True, description="tell clients to send to this edge at all")
    gateway_rollout_percent: int = Field(100, ge=0, le=100, description="share of devices told to send here")
    gateway_rollout_salt: str = Field("edge-proxy", min_length=1, max_length=64,
                                      description="hash salt choosing the rollout's devices; change it per rollout")
    gateway_flags_file: Path | None = Field(
        None, description="TOML of edge_proxy_enabled/dark_mode/rollout_percent, re-read when it changes; "
                          "default <data_dir>/gateway/flags.toml")
    gateway_flags_check_seconds: float = Field(1.0, gt=0, le=300, description="how often the flags file is checked")
    gateway_require_signature: bool | None = Field(
        None, description="unset = signatures required exactly when hmac_keys is set")
    gateway_max_inflight_requests: int = Field(256, ge=1, description="per worker; beyond it requests get 429")
    gateway_retry_after_seconds: int = Field(1, ge=1, description="Retry-After sent with 429 and 503")
    gateway_spool_max_bytes: int = Field(1 << 30, ge=1 << 20, description="disk spool bound per worker")
    gateway_delivery_timeout_ms: int = Field(5000, ge=100, description="Kafka ack wait before spooling a batch")
    gateway_optout_refresh_seconds: float = Field(5.0, gt=0, description="opt-out registry reload interval")
    gateway_trust_forwarded_for: bool = Field(False, description="take the client IP from X-Forwarded-For")
    gateway_allocator: str = Field(
        "jemalloc", description="memory allocator of the gateway processes: jemalloc when installed (about a tenth "
                                "more events per core), or the C library's")
    segment_max_batch_events: int = Field(
        500, ge=1, le=2500, description="most messages per Segment /v1/batch request (SDKs send up to 100)")
    audit_hash_key: Secret | None = Field(
        None, description="base64 key for the salted payload hash of rejected events; generated once when unset")

    # --- Flow ----------------------------------------------------------------------------
    geoip_db: Path | None = Field(None, description="MaxMind-format city database (.mmdb)")
    pii_salts: Secret = Field(default_factory=lambda: Secret([]), description="QUARTER:BASE64[:FROM:UNTIL],...")
    pii_salt_overlap_days: int = Field(14, ge=0, le=92)
    ip_handling: str = Field("truncate", description="after geo: 'drop' the IP or 'truncate' it to /24 and /48")
    flow_outputs: str = Field("all", description="where rows go: lake[:URL], clickhouse, snowflake, all (the three), "
                                                 "stdout, jsonl:DIR, kafka:TOPIC; comma-separated")
    flow_batch_size: int = Field(1000, ge=1, description="most events per enrichment batch (one plan-tier query)")
    flow_batch_timeout_ms: int = Field(500, ge=1, description="longest an event waits for its batch to fill")
    plan_tier_table: str = Field("accounts", pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$",
                                 description="OLTP table with user_id, plan_tier")
    plan_tier_ttl_seconds: float = Field(300.0, gt=0, description="how long a plan-tier answer is reused")
    geoip_cache_size: int = Field(100_000, ge=0, description="LRU entries of geo look-ups")
    clock_skew_max_seconds: int = Field(172_800, ge=0, description="largest client clock correction applied")

    @field_validator("log_level", "kafka_security_protocol")
    @classmethod
    def _upper_choice(cls, v: str, info) -> str:
        allowed = _CHOICES[info.field_name]
        if v.upper() not in allowed:
            raise ValueError("must be " + ", ".join(allowed[:-1]) + " or " + allowed[-1])
        return v.upper()

    @field_validator("kafka_brokers")
    @classmethod
    def _brokers(cls, v: str) -> str:
        for b in v.split(","):
            host, sep, port = b.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{b.strip()!r} is not host:port")
        return v

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse(cls, v: str) -> str:
        if urlsplit(v).scheme not in {"chdb", "clickhouse", "clickhouses"}:
            raise ValueError("scheme must be chdb://, clickhouse:// or clickhouses://")
        return v

    @field_validator("snowflake_url")
    @classmethod
    def _snowflake(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "snowflake" or not parts.hostname:
            raise ValueError("must look like snowflake://user@account/DATABASE/SCHEMA")
        return v

    @field_validator(*_WORDS)
    @classmethod
    def _word(cls, v: str, info: Any) -> str:
        allowed = _WORDS[info.field_name]
        if v not in allowed:
            raise ValueError("must be " + " or ".join(repr(a) for a in allowed))
        return v

    @model_validator(mode="after")
    def _pairs(self) -> "Settings":
        problems = cross_field_problems(lambda name: getattr(self, name))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # --- derived views -------------------------------------------------------------------
    def kafka_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka configuration for a producer, consumer or admin client."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_brokers,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            conf["sasl.password"] = self.kafka_sasl_password.reveal()
        if self.kafka_ssl_ca_location:
            conf["ssl.ca.location"] = str(self.kafka_ssl_ca_location)
        conf.update(self.kafka_options)
        conf.update(extra)
        return conf

    @property
    def topics(self) -> tuple[str, str, str]:
        return (self.kafka_topic_raw, self.kafka_topic_rejected, self.kafka_topic_invalid)

    def salt_for(self, day: dt.date) -> list[PiiSalt]:
        """Salts valid on ``day``: the quarter's own first, then any previous one still in its overlap."""
        own = quarter_of(day)
        valid = [s for s in self.pii_salts.reveal() if s.valid_from <= day <= s.valid_until]
        return sorted(valid, key=lambda s: s.salt_id != own)

    def describe(self) -> dict[str, Any]:
        """Every setting with secrets masked: safe to print or log."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in SECRET_FIELDS:
                out[name] = None if value is None else "**********"
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out

    def __repr_args__(self):  # pydantic's repr: keep secrets masked there too
        return [(k, v) for k, v in self.describe().items()]


def cross_field_problems(get) -> list[str]:
    """Checks that involve several settings. ``get(name)`` returns a setting's value (possibly still text),
    so that these run even when other fields failed validation and every problem is reported together."""
    problems = []
    if (get("tls_cert_file") is None) != (get("tls_key_file") is None):
        problems.append("tls_cert_file and tls_key_file must be given together")
    if str(get("kafka_security_protocol")).upper().startswith("SASL") and not get("kafka_sasl_mechanism"):
        problems.append("kafka_sasl_mechanism is required with a SASL security protocol")
    try:
        if int(get("max_decompressed_bytes")) < int(get("max_body_bytes")):
            problems.append("max_decompressed_bytes must be at least max_body_bytes")
    except (TypeError, ValueError):
        pass  # a non-numeric value is reported by field validation
    return problems


# Parsers for the fields whose text form is not what pydantic would accept directly.
def _secret_text(value: Any) -> Secret:
    return Secret(str(value).strip())


_PARSERS = {
    "hmac_keys": lambda v, ctx: Secret(parse_hmac_keys(v) if isinstance(v, str) else {
        str(k): _b64(str(b), f"key {k!r}") for k, b in dict(v).items()}),
    "pii_salts": lambda v, ctx: Secret(parse_pii_salts(v if isinstance(v, str) else "\n".join(v),
                                                       ctx.get("pii_salt_overlap_days", 14))),
    "write_keys": lambda v, ctx: Secret(tuple(_entries(v) if isinstance(v, str) else [str(x) for x in v])),
    "kafka_options": lambda v, ctx: _kv_pairs(v) if isinstance(v, str) else {str(k): str(x) for k, x in dict(v).items()},
}


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}".lower().replace("-", "_")
        # kafka_options is itself a table; every other table is a section to flatten.
        if isinstance(value, Mapping) and name != "kafka_options":
            out.update(_flatten(value, name + "_"))
        else:
            out[name] = value
    return out


def _read_file(path: str, what: str, problems: list[str]) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        problems.append(f"{what}: cannot read {path!r}: {exc.strerror or exc}")
        return None


def load_settings(env: Mapping[str, str] | None = None, config_file: str | Path | None = None) -> Settings:
    """Build and validate the settings, reporting every problem at once.

    :param env: the environment to read (defaults to ``os.environ``)
    :param config_file: a TOML file; defaults to ``$HEADWATER_CONFIG`` when set
    :raises SettingsError: with one line per problem
    """
    env = os.environ if env is None else env
    fields = Settings.model_fields
    problems: list[str] = []
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}

    config_file = config_file or env.get(CONFIG_ENV)
    if config_file:
        try:
            table = tomllib.loads(Path(config_file).read_text())
        except OSError as exc:
            problems.append(f"config file {config_file}: {exc.strerror or exc}")
            table = {}
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"config file {config_file}: not valid TOML: {exc}")
            table = {}
        for name, value in _flatten(table).items():
            if name not in fields:
                problems.append(f"config file {config_file}: unknown setting {name!r}")
                continue
            raw[name], origin[name] = value, f"{config_file} [{name}]"

    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV or key.startswith("HEADWATER_DEVSTACK_"):
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name.endswith("_file") and name not in fields:
            base = name[: -len("_file")]
            if base not in fields:
                problems.append(f"{key}: unknown setting {ENV_PREFIX + base.upper()}")
                continue
            if ENV_PREFIX + base.upper() in env:
                problems.append(f"{key}: set either {ENV_PREFIX + base.upper()} or {key}, not both")
                continue
            text = _read_file(value, key, problems)
            if text is not None:
                raw[base], origin[base] = text, key
            continue
        if name not in fields:
            problems.append(f"{key}: unknown setting")
            continue
        raw[name], origin[name] = value, key

    # pii_salts needs the overlap setting; parse that one first (pydantic validates it again later).
    ctx: dict[str, Any] = {}
    try:
        ctx["pii_salt_overlap_days"] = int(raw.get("pii_salt_overlap_days", 14))
    except (TypeError, ValueError):
        pass
    for name, parse in _PARSERS.items():
        if name in raw:
            try:
                raw[name] = parse(raw[name], ctx)
            except (ValueError, TypeError) as exc:
                problems.append(f"{origin[name]}: {exc}")
                del raw[name]
    for name in SECRET_FIELDS - _PARSERS.keys():
        if name in raw and not isinstance(raw[name], Secret):
            raw[name] = _secret_text(raw[name])

    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        for err in exc.errors():
            if not err["loc"]:
                continue  # model-level (cross-field) problems are collected below, once
            loc = err["loc"][0] if err["loc"] else None
            where = origin.get(loc, ENV_PREFIX + str(loc).upper()) if loc else "settings"
            msg = err["msg"].removeprefix("Value error, ")
            # Never echo the offending input: it may be a secret.
            problems.append(f"{where}: {msg}")
        settings = None
        defaults = {n: f.get_default(call_default_factory=True) for n, f in fields.items()}
        problems.extend(f"settings: {p}" for p in cross_field_problems(lambda n: raw.get(n, defaults[n])))
    if problems:
        raise SettingsError(problems)
    assert settings is not None
    return settings
