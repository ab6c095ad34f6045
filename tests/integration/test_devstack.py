"""The devstack against the real services: each answers its own protocol, and up/down/status are idempotent."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from headwater.devstack import Devstack, DevstackError, _port_open, _start_time

pytestmark = pytest.mark.integration


def test_kafka_has_the_topics_and_round_trips_a_message(devstack, stack_settings):
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    meta = AdminClient(stack_settings.kafka_config()).list_topics(timeout=5)
    for topic in stack_settings.topics:
        assert len(meta.topics[topic].partitions) == 4
    marker = uuid.uuid4().hex.encode()
    producer = Producer(stack_settings.kafka_config(acks="all"))
    producer.produce(stack_settings.kafka_topic_invalid, marker, key=marker, partition=0)
    assert producer.flush(10) == 0
    consumer = Consumer(stack_settings.kafka_config(**{
        "group.id": f"devstack-test-{marker.decode()}", "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}))
    consumer.subscribe([stack_settings.kafka_topic_invalid])
    # The shared topic may already hold other tests' records: read until the marker shows up, bounded by time.
    found, deadline = False, time.monotonic() + 60
    try:
        while not found and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            found = msg is not None and msg.error() is None and msg.value() == marker
    finally:
        consumer.close()
    assert found, "the marker did not come back from the broker within 60 s"


def test_s3_bucket_accepts_objects(stack_settings):
    import s3fs

    fs = s3fs.S3FileSystem(key=stack_settings.s3_access_key_id,
                           secret=stack_settings.s3_secret_access_key.reveal(),
                           client_kwargs={"endpoint_url": stack_settings.s3_endpoint_url, "region_name": "us-east-1"})
    path = f"{stack_settings.s3_url.removeprefix('s3://')}/devstack-test/{uuid.uuid4().hex}.txt"
    fs.pipe(path, b"hello lake")
    assert fs.cat(path) == b"hello lake"
    fs.rm(path)


def test_clickhouse_server_answers_native_protocol(devstack):
    from clickhouse_driver import Client

    client = Client(host="127.0.0.1", port=devstack.ports["clickhouse"])
    version = client.execute("SELECT version()")[0][0]
    assert version.startswith("18.16")
    assert ("analytics",) in client.execute("SHOW DATABASES")


def test_fakesnow_answers_the_snowflake_connector(devstack, stack_settings):
    import snowflake.connector

    conn = snowflake.connector.connect(user="headwater", password=stack_settings.snowflake_password.reveal(),
                                       account="fakesnow", host="127.0.0.1", port=devstack.ports["snowflake"],
                                       protocol="http")
    try:
        cur = conn.cursor()
        cur.execute("CREATE DATABASE IF NOT EXISTS DEVSTACK_TEST")
        cur.execute("SELECT PARSE_JSON('{\"a\": 1}'):a::int")
        assert cur.fetchone()[0] == 1
    finally:
        conn.close()


def test_redis_and_postgres_answer(devstack):
    assert devstack.external_checks() == {"redis": True, "postgres": True}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_stack(tmp_path):
    """A second, throw-away stack on free ports, so lifecycle tests never touch the session's stack."""
    ports = {name: _free_port() for name in ("kafka", "s3", "snowflake", "clickhouse", "clickhouse_http")}
    stack = Devstack(root=tmp_path / "stack", ports=ports)
    yield stack
    stack.down()


def test_up_twice_status_and_down_leave_nothing_behind(private_stack):
    stack = private_stack
    assert sorted(stack.up()) == ["clickhouse", "kafka", "s3", "snowflake"]
    pids = {name: stack.pid_of(name) for name in stack.services}
    assert all(pids.values())
    assert {r.name: r.state for r in stack.status()} == {
        "kafka": "running", "s3": "running", "snowflake": "running", "clickhouse": "running",
        "redis": "external-up", "postgres": "external-up"}

    assert stack.up() == []  # already running: nothing new starts
    assert {name: stack.pid_of(name) for name in stack.services} == pids

    assert sorted(stack.down()) == ["clickhouse", "kafka", "s3", "snowflake"]
    for name, pid in pids.items():
        assert _start_time(pid) is None, f"{name} (pid {pid}) still runs"
        assert not _port_open(stack.ports[name]), f"{name} port still open"
    assert not list(stack.root.glob("*.pid"))
    assert stack.down() == []
    assert all(r.state == "stopped" for r in stack.status() if r.name in stack.services)


def test_one_service_can_be_stopped_and_started_alone(private_stack):
    stack = private_stack
    assert stack.up(["kafka", "s3"]) == ["kafka", "s3"]
    s3_pid = stack.pid_of("s3")
    assert stack.down(["kafka"]) == ["kafka"]
    assert stack.pid_of("s3") == s3_pid
    assert stack.up(["kafka"]) == ["kafka"]  # the broker is memory-only: topics are created again
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": f"127.0.0.1:{stack.ports['kafka']}"}).list_topics(timeout=5).topics
    assert {"analytics.events.raw", "analytics.events.rejected", "analytics.events.invalid"} <= set(topics)


def test_a_port_taken_by_someone_else_is_refused(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        stack = Devstack(root=tmp_path / "s", ports={"kafka": port})
        with pytest.raises(DevstackError, match=f"port {port} is already in use"):
            stack.up(["kafka"])
        assert {r.name: r.state for r in stack.status()}["kafka"] == "foreign"


def test_a_reused_pid_is_never_killed(tmp_path):
    stack = Devstack(root=tmp_path / "s", ports={"s3": _free_port()})
    stack.root.mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        # A stale pid file naming a live process with another start time: not ours.
        (stack.root / "s3.pid").write_text(f"{bystander.pid} 1\n")
        assert stack.pid_of("s3") is None
        assert stack.down(["s3"]) == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_unknown_service_name_is_a_clear_error(tmp_path):
    with pytest.raises(DevstackError, match="unknown service.*known: kafka, s3, snowflake, clickhouse"):
        Devstack(root=tmp_path / "s").up(["zookeeper"])


def test_cli_status_and_env_for_the_running_stack(devstack):
    env = dict(os.environ, HEADWATER_DEVSTACK_DIR=str(devstack.root))
    out = subprocess.run([sys.executable, "-m", "headwater", "devstack", "status", "--env"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "kafka       running" in out.stdout
    assert f"export HEADWATER_KAFKA_BROKERS=127.0.0.1:{devstack.ports['kafka']}" in out.stdout
    assert "export HEADWATER_CLICKHOUSE_URL=clickhouse://" in out.stdout
