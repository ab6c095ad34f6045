"""``headwater gateway`` as an operator runs it: uvicorn, several workers, settings from the environment."""
from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

import orjson
import pytest

from headwater.allocator import STARTED, find_jemalloc
from headwater.procs import stop_process_group
from ingest_gateway.signing import sign_request
from tests.integration.gateway_support import (KID, MASTER_KEY, REPO, free_port, gateway_process, make_event,
                                               read_topic, records_for)

pytestmark = pytest.mark.integration


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_gateway_command_serves_with_two_workers(devstack, stack_settings, tmp_path):
    env = {**os.environ, **devstack.env(), "HEADWATER_DATA_DIR": str(tmp_path),
           "HEADWATER_HMAC_KEYS": f"{KID}:{base64.b64encode(MASTER_KEY).decode()}"}
    with gateway_process(env, "--workers", "2") as base:
        events = [make_event() for _ in range(4)]
        body = orjson.dumps({"batch": events})
        status, answer = http("POST", base + "/analytics/collect", body,
                              {"Content-Type": "application/json", **sign_request(body, "it-device", KID, MASTER_KEY)})
        assert status == 200 and orjson.loads(answer)["accepted"] == 4
        assert http("GET", base + "/healthz")[0] == 200
        status, text = http("GET", base + "/metrics")
        assert status == 200 and b"analytics_ingest_events_total" in text
        found = records_for(read_topic(stack_settings.kafka_brokers, "analytics.events.raw"),
                            {e["event_id"] for e in events})
        assert len(found) == 4
        # Each worker took a spool slot of its own.
        slots = sorted(p.name for p in (tmp_path / "gateway" / "spool").iterdir())
        assert slots == ["slot-0", "slot-1"]


def self_signed_certificate(directory) -> tuple[str, str]:
    """A fresh key and a certificate for 127.0.0.1 signed by that key, as PEM files in ``directory``."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "headwater-gateway-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "gateway.crt", directory / "gateway.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_gateway_serves_https_with_a_certificate(devstack, stack_settings, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    trust = ssl.create_default_context(cafile=cert)
    env = {k: v for k, v in {**os.environ, **devstack.env()}.items() if k != "HEADWATER_CONFIG"}
    env.update({"HEADWATER_DATA_DIR": str(tmp_path),
                "HEADWATER_HMAC_KEYS": f"{KID}:{base64.b64encode(MASTER_KEY).decode()}"})
    with gateway_process(env, "--ssl-certfile", cert, "--ssl-keyfile", key, tls_context=trust) as base:
        events = [make_event() for _ in range(3)]
        body = orjson.dumps({"batch": events})
        request = urllib.request.Request(base + "/analytics/collect", data=body, method="POST", headers={
            "Content-Type": "application/json", **sign_request(body, "it-device", KID, MASTER_KEY)})
        with urllib.request.urlopen(request, timeout=10, context=trust) as response:
            assert response.status == 200 and orjson.loads(response.read())["accepted"] == 3
        # The certificate presented is the one given on the command line.
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=5) as raw:
            with trust.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                served = ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True))
        assert served.strip() == open(cert).read().strip()
        # Plain HTTP on the TLS port is refused rather than answered.
        with pytest.raises((OSError, HTTPException)):
            urllib.request.urlopen(base.replace("https://", "http://") + "/healthz", timeout=5).read()
        found = records_for(read_topic(stack_settings.kafka_brokers, "analytics.events.raw"),
                            {e["event_id"] for e in events})
        assert len(found) == 3


def test_gateway_refuses_a_certificate_without_its_key(tmp_path):
    cert, _ = self_signed_certificate(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env["HEADWATER_DATA_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "ingest_gateway.cli", "--port", str(free_port()),
                           "--ssl-certfile", cert], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "must be given together" in done.stderr
    other_key = tmp_path / "other"
    other_key.mkdir()
    _, wrong_key = self_signed_certificate(other_key)
    done = subprocess.run([sys.executable, "-m", "ingest_gateway.cli", "--port", str(free_port()),
                           "--ssl-certfile", cert, "--ssl-keyfile", wrong_key], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "cannot use the TLS certificate" in done.stderr


def _serving_process_maps(env: dict[str, str]) -> tuple[str, str]:
    """Start ``headwater gateway`` (one worker: the started process serves), wait until it answers; its memory
    map and its output, read while it runs."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ingest_gateway.cli", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (_listening(port) and http("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "gateway did not become ready"
            time.sleep(0.3)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()  # same pid after the restart: execve keeps it
    finally:
        stop_process_group(proc)
    return maps, proc.stdout.read().decode()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_gateway_runs_under_jemalloc_unless_told_otherwise(devstack, tmp_path):
    """The allocator is a production setting: the started gateway really has the library mapped (or not)."""
    assert find_jemalloc() is not None, "libjemalloc2 is not installed (make tools installs it)"
    env = {**{k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", STARTED, "HEADWATER_CONFIG")},
           **devstack.env(), "HEADWATER_DATA_DIR": str(tmp_path)}
    maps, output = _serving_process_maps(env)
    assert "libjemalloc" in maps and "memory allocator jemalloc" in output
    maps, output = _serving_process_maps({**env, "HEADWATER_GATEWAY_ALLOCATOR": "system"})
    assert "libjemalloc" not in maps and "memory allocator system" in output
