"""Throughput and latency of ``headwater gateway`` (uvicorn, one worker) against the devstack's Kafka.

Usage::

    python bench/bench_gateway.py [--duration S] [--loads 0.25,0.5,0.75] [--connections N] [--no-redis] [--json]

What runs, all on loopback:

- the gateway as an operator starts it (``python -m headwater gateway --workers 1``), with signatures required,
  Redis for replay protection and event-id dedup (``--no-redis``: in-process), Kafka = the devstack broker;
- a load generator in separate processes: raw HTTP/1.1 keep-alive connections sending requests built before
  the clock starts (signed, gzipped 50-event batches of realistic events: page and screen views, sign-ups,
  messages, subscriptions, identifies, each with a mobile or web context), so generating costs nothing
  during the run;
- first closed-loop at full speed (``--connections`` in flight) for the maximum, then open-loop at fixed
  offered rates (fractions of that maximum), latency measured from each request's scheduled send time, so
  queueing behind a slow response counts (no coordinated omission);
- in the same run, a bare ceiling: a minimal ASGI app under the same uvicorn that only reads the body and
  produces it to Kafka as one message (same producer settings), measured the same way.

Events/s per core = accepted events / the gateway process's CPU seconds (utime + stime from /proc, all
threads, librdkafka's included) over the measured window. ``main(argv)`` returns the figures as a dict.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import multiprocessing as mp
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from headwater.procs import stop_process_group

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MASTER_KEY = b"bench-master-key-0123456789abcdef"
KID = "bench"
EVENTS_PER_BATCH = 50
BARE_TOPIC = "bench.gateway.bare"
# The gateway under test writes to topics of its own: the devstack's broker is shared and keeps everything in
# memory, and a run leaves a few hundred MB behind that anyone reading analytics.events.raw from the
# beginning would otherwise have to wade through.
GATEWAY_TOPICS = {"HEADWATER_KAFKA_TOPIC_RAW": "bench.gateway.raw",
                  "HEADWATER_KAFKA_TOPIC_REJECTED": "bench.gateway.rejected"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- realistic traffic ---------------------------------------------------------------------------
_MOBILE = {"app": {"name": "Acme Community", "version": "4.12.0", "build": "4120", "namespace": "com.acme.community"},
           "locale": "en-US", "timezone": "America/New_York",
           "device": {"type": "phone", "model": "iPhone15,3", "manufacturer": "Apple", "os": "iOS", "os_version": "17.4.1"},
           "library": {"name": "headwater-swift", "version": "1.8.2"},
           "experiments": {"onboarding_v2": "treatment", "feed_ranking": "control"}}
_WEB = {"app": {"name": "Acme Web", "version": "2026.12.1"}, "locale": "de-DE", "timezone": "Europe/Berlin",
        "device": {"type": "desktop", "os": "macOS", "os_version": "14.5"},
        "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Safari/605.1.15",
        "library": {"name": "headwater-js", "version": "3.2.0"},
        "campaign": {"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "december"}}


def _properties(rng: random.Random) -> tuple[str, dict[str, Any]]:
    kind = rng.choices(["page_viewed", "screen_viewed", "message_sent", "community_join", "subscription_started",
                        "identify"], weights=[35, 25, 20, 8, 4, 8])[0]
    n = rng.randrange(1, 10_000)
    if kind == "page_viewed":
        return kind, {"url": f"https://app.acme.example/c/{n}/threads?sort=new", "path": f"/c/{n}/threads",
                      "title": "Threads - Acme", "referrer": "https://www.google.com/", "load_time_ms": rng.randrange(80, 2000)}
    if kind == "screen_viewed":
        return kind, {"screen_name": "ThreadDetail", "screen_class": "ThreadDetailViewController",
                      "previous_screen_name": "Feed", "load_time_ms": rng.randrange(20, 900), "is_first_view": False}
    if kind == "message_sent":
        return kind, {"message_id": f"msg_{n}", "conversation_id": f"conv_{n % 97}", "community_id": f"c_{n % 13}",
                      "channel_type": "thread", "message_type": "text", "length_chars": rng.randrange(1, 800),
                      "mention_count": rng.randrange(0, 3), "contains_link": False, "is_reply": True, "sent_via": "ios"}
    if kind == "community_join":
        return kind, {"community_id": f"c_{n % 13}", "join_source": "invite_link", "role": "member", "member_count": n}
    if kind == "subscription_started":
        return kind, {"subscription_id": f"sub_{n}", "plan_id": "team_monthly_v3", "plan_name": "Team",
                      "billing_interval": "month", "amount_minor": 4900, "currency": "EUR", "seats": 5,
                      "payment_provider": "stripe"}
    return kind, {"email": f"user{n}@example.com", "username": f"user_{n}", "country": "DE",
                  "plan_id": "team_monthly_v3", "marketing_opt_in": False}


def build_requests(count: int, seed: int, path: str = "/analytics/collect") -> list[bytes]:
    """``count`` complete HTTP requests (headers + gzipped body), each signed by its own device."""
    import orjson

    from ingest_gateway.signing import sign_request

    rng = random.Random(seed)
    run_tag = uuid.uuid4().int  # event ids differ between runs: Redis remembers ids for the dedup window
    out = []
    for i in range(count):
        device = f"bench-dev-{seed}-{i % 500}"
        user = f"usr_{seed}_{rng.randrange(100_000)}"
        context = _MOBILE if rng.random() < 0.6 else _WEB
        batch = []
        for _ in range(EVENTS_PER_BATCH):
            name, props = _properties(rng)
            batch.append({"event": name, "event_id": str(uuid.UUID(int=rng.getrandbits(128) ^ run_tag, version=4)),
                          "timestamp": "2026-12-03T12:00:00.123Z", "user_id": user, "anonymous_id": f"anon_{device}",
                          "device_id": device, "properties": props, "context": context})
        body = gzip.compress(orjson.dumps({"sent_at": "2026-12-03T12:00:01.000Z", "batch": batch}), 6, mtime=0)
        headers = sign_request(body, device, KID, MASTER_KEY)
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")
        out.append(head.encode() + body)
    return out


# --- load generator (runs in child processes) ------------------------------------------------------
async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _drive(port: int, requests: list[bytes], rate: float | None, connections: int, start_at: float,
                 window: tuple[float, float]) -> list[tuple[float, int, bool]]:
    """Send until the window closes; returns (latency s, status, all accepted) for requests sent in the window."""
    conns: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        conns.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    results: list[tuple[float, int, bool]] = []
    accepted_marker = f'"accepted":{EVENTS_PER_BATCH}'.encode()
    it = iter(requests)
    loop = asyncio.get_running_loop()
    lo, hi = window

    async def one(request: bytes, scheduled: float) -> None:
        reader, writer = await conns.get()
        try:
            status, body = await _exchange(reader, writer, request)
        finally:
            conns.put_nowait((reader, writer))
        if lo <= scheduled < hi:
            results.append((time.time() - scheduled, status, accepted_marker in body or body.startswith(b"ok")))

    await asyncio.sleep(max(0.0, start_at - time.time()))
    if rate is None:  # closed loop: every connection sends its next request as soon as it has an answer
        async def worker() -> None:
            while time.time() < hi:
                request = next(it, None)
                if request is None:
                    return
                await one(request, time.time())

        await asyncio.gather(*(worker() for _ in range(connections)))
    else:  # open loop at a fixed rate, whatever the answers do
        tasks = set()
        interval, n = 1.0 / rate, 0
        t0 = time.time()
        while True:
            scheduled = t0 + n * interval
            if scheduled >= hi:
                break
            delay = scheduled - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            request = next(it, None)
            if request is None:
                break
            task = loop.create_task(one(request, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.wait(tasks, timeout=30)
    while not conns.empty():
        conns.get_nowait()[1].close()
    return results


def _load_process(port: int, count: int, seed: int, path: str, rate: float | None, connections: int,
                  ready: Any, go: Any, out: Any) -> None:
    requests = build_requests(count, seed, path)
    ready.put(seed)
    start_at, window = go.get()
    try:
        out.put(asyncio.run(_drive(port, requests, rate, connections, start_at, window)))
    except BaseException as exc:  # the parent must hear of it rather than wait
        out.put(exc)
        raise


# --- the servers ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: all threads of the process


def wait_ready(port: int, proc: subprocess.Popen, path: str = "/readyz", timeout: float = 40,
               output: Callable[[], str] | None = None) -> None:
    """Poll ``http://127.0.0.1:{port}{path}`` until it answers 200.

    :param output: the end of the server's output, for the error when it exits or is not ready in time (default:
        what it wrote to ``proc.stdout``, a pipe)
    :raises RuntimeError: when the server exits first or ``timeout`` passes
    """
    import urllib.request

    tail = output or (lambda: proc.stdout.read().decode()[-2000:])
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready within {timeout:.0f} s" + (f": {output()}" if output else ""))
        time.sleep(0.2)


def gateway_env(data_dir: str, brokers: str, redis: bool, log_level: str,
                allocator: str | None = None) -> dict[str, str]:
    """The environment a benchmarked gateway runs with: this one without HEADWATER_*, then the bench's settings.

    :param allocator: ``gateway_allocator`` (``None``: the setting's default, jemalloc when installed)
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env.update({"HEADWATER_KAFKA_BROKERS": brokers, "HEADWATER_DATA_DIR": data_dir, "HEADWATER_LOG_LEVEL": log_level,
                "HEADWATER_HMAC_KEYS": f"{KID}:{base64.b64encode(MASTER_KEY).decode()}",
                "HEADWATER_GATEWAY_ID": "gw-bench", "HEADWATER_GATEWAY_MAX_INFLIGHT_REQUESTS": "4096",
                **GATEWAY_TOPICS})
    if redis:
        env["HEADWATER_REDIS_URL"] = "redis://127.0.0.1:6379/0"
    if allocator is not None:
        env["HEADWATER_GATEWAY_ALLOCATOR"] = allocator
    return env


def gateway_command(port: int) -> list[str]:
    """``headwater gateway`` as an operator starts it, one worker, on loopback."""
    return [sys.executable, "-m", "headwater", "gateway", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


def start_gateway(port: int, data_dir: str, brokers: str, redis: bool, log_level: str,
                  allocator: str | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(gateway_command(port), cwd=REPO,
                            env=gateway_env(data_dir, brokers, redis, log_level, allocator),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready(port, proc)
    return proc


def start_bare(port: int, brokers: str) -> subprocess.Popen:
    env = {**os.environ, "BENCH_BROKERS": brokers}
    proc = subprocess.Popen([sys.executable, __file__, "_serve_bare", "--port", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready(port, proc, "/ready")
    return proc


def bare_app_factory():
    """The ceiling: read the body, produce it to Kafka (acks=all, as the gateway does), answer once acked."""
    import threading

    from confluent_kafka import Producer

    state: dict[str, Any] = {}

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    producer = Producer({"bootstrap.servers": os.environ["BENCH_BROKERS"], "acks": "all",
                                         "enable.idempotence": True, "compression.type": "lz4", "linger.ms": 5,
                                         "batch.num.messages": 10000})
                    stop_polling = threading.Event()

                    def poll() -> None:
                        while not stop_polling.is_set():
                            producer.poll(0.05)

                    threading.Thread(target=poll, daemon=True).start()
                    state.update(producer=producer, stop=stop_polling)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    state["producer"].flush(10)
                    state["stop"].set()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/ready":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def delivered(err, _msg) -> None:
            loop.call_soon_threadsafe(future.set_result, err)

        state["producer"].produce(BARE_TOPIC, b"".join(chunks), on_delivery=delivered)
        err = await future
        answer = b"ok" if err is None else b"error"
        await send({"type": "http.response.start", "status": 200 if err is None else 503,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    return app


def ensure_topic(brokers: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers})
    if topic in admin.list_topics(timeout=10).topics:
        return
    for future in admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)]).values():
        try:
            future.result(15)
        except Exception as exc:  # created meanwhile
            if "exist" not in str(exc).lower():
                raise


# --- phases ---------------------------------------------------------------------------------------
def run_phase(port: int, pid: int, *, rate: float | None, duration: float, warmup: float, connections: int,
              procs: int, max_rps_guess: float, seed: int, path: str = "/analytics/collect") -> dict[str, Any]:
    """One measured run; ``rate`` = offered requests/s in total (None: as fast as possible)."""
    ctx = mp.get_context("fork")
    ready, go, out = ctx.Queue(), ctx.Queue(), ctx.Queue()
    per_proc_rate = None if rate is None else rate / procs
    expected = (per_proc_rate or max_rps_guess / procs) * (duration + warmup) * 1.15 + 50
    workers = [ctx.Process(target=_load_process, args=(port, int(expected), seed * 100 + i, path, per_proc_rate,
                                                        max(1, connections // procs), ready, go, out), daemon=True)
               for i in range(procs)]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=600)
    start_at = time.time() + 0.5
    window = (start_at + warmup, start_at + warmup + duration)
    for _ in workers:
        go.put((start_at, window))
    time.sleep(max(0.0, window[0] - time.time()))
    cpu0 = cpu_seconds(pid)
    time.sleep(max(0.0, window[1] - time.time()))
    cpu1 = cpu_seconds(pid)
    results: list[tuple[float, int, bool]] = []
    for _ in workers:
        got = out.get(timeout=120)
        if isinstance(got, BaseException):
            raise RuntimeError(f"load generator failed: {got!r}")
        results.extend(got)
    for w in workers:
        w.join(30)
    latencies = sorted(r[0] for r in results)
    ok = sum(1 for r in results if r[1] == 200 and r[2])
    cpu = cpu1 - cpu0
    events = ok * EVENTS_PER_BATCH
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r[1])] = statuses.get(str(r[1]), 0) + 1

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")

    return {"offered_rps": rate, "requests": len(results), "ok_requests": ok, "statuses": statuses,
            "accepted_events_per_s": events / duration, "cpu_seconds": cpu, "cpu_cores_used": cpu / duration,
            "events_per_cpu_second": events / cpu if cpu > 0 else float("nan"),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": latencies[-1] * 1000 if latencies else float("nan")}


def measure_server(name: str, port: int, pid: int, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    phases = {}
    # a short warm-up run first (connections, JIT-free but caches, Kafka metadata, Redis pools)
    run_phase(port, pid, rate=None, duration=1.0, warmup=0.5, connections=args.connections, procs=args.procs,
              max_rps_guess=args.max_rps_guess, seed=seed)
    peak = run_phase(port, pid, rate=None, duration=args.duration, warmup=1.0, connections=args.connections,
                     procs=args.procs, max_rps_guess=args.max_rps_guess, seed=seed + 1)
    phases["max"] = peak
    peak_rps = peak["ok_requests"] / args.duration
    for i, fraction in enumerate(args.loads):
        rate = max(1.0, peak_rps * fraction)
        phases[f"{fraction:.2f}"] = run_phase(port, pid, rate=rate, duration=args.duration, warmup=1.0,
                                              connections=max(args.connections, 64), procs=args.procs,
                                              max_rps_guess=args.max_rps_guess, seed=seed + 2 + i)
    return {"name": name, "peak_requests_per_s": peak_rps, "phases": phases}


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| server | load | offered req/s | accepted events/s | gateway CPU cores | events/s per core "
             "| p50 ms | p99 ms | max ms | statuses |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for res in results:
        for label, p in res["phases"].items():
            offered = "closed loop" if p["offered_rps"] is None else f"{p['offered_rps']:.0f}"
            lines.append(f"| {res['name']} | {label if label == 'max' else label + ' x max'} | {offered} "
                         f"| {p['accepted_events_per_s']:,.0f} | {p['cpu_cores_used']:.2f} "
                         f"| {p['events_per_cpu_second']:,.0f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} "
                         f"| {p['max_ms']:.1f} | {p['statuses']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per phase (default 6)")
    parser.add_argument("--loads", default="0.25,0.5,0.75", help="offered loads as fractions of the measured max")
    parser.add_argument("--connections", type=int, default=16, help="concurrent requests in the closed-loop phase")
    parser.add_argument("--procs", type=int, default=1, help="load-generator processes (default 1)")
    parser.add_argument("--max-rps-guess", type=float, default=2500.0, help="requests pre-built per second of a run")
    parser.add_argument("--brokers", default=os.environ.get("HEADWATER_KAFKA_BROKERS", "127.0.0.1:29092"))
    parser.add_argument("--no-redis", action="store_true", help="in-process dedup/replay instead of Redis")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare ceiling")
    parser.add_argument("--log-level", default="WARNING", help="the gateway's log level (INFO logs every request)")
    parser.add_argument("--allocator", choices=("jemalloc", "system"), default=None,
                        help="the gateway's memory allocator (default: the setting's default, jemalloc)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    args.loads = [float(x) for x in args.loads.split(",") if x.strip()]

    results = []
    for topic in GATEWAY_TOPICS.values():
        ensure_topic(args.brokers, topic)
    with tempfile.TemporaryDirectory(prefix="hw-bench-") as data_dir:
        port = free_port()
        gateway = start_gateway(port, data_dir, args.brokers, not args.no_redis, args.log_level, args.allocator)
        try:
            results.append(measure_server("gateway", port, gateway.pid, args, seed=1000))
        finally:
            stop_process_group(gateway)
    if not args.no_bare:
        ensure_topic(args.brokers, BARE_TOPIC)
        port = free_port()
        bare = start_bare(port, args.brokers)
        try:
            results.append(measure_server("bare ceiling", port, bare.pid, args, seed=2000))
        finally:
            stop_process_group(bare)
    report: dict[str, Any] = {"events_per_batch": EVENTS_PER_BATCH, "duration_s": args.duration,
                              "cores": os.cpu_count(), "redis": not args.no_redis, "results": results,
                              "per_core_basis": "accepted events / CPU seconds (utime + stime, all threads) of "
                                                "the server process over the measured window"}
    gw = results[0]["phases"]
    report["summary"] = {
        "gateway_events_per_core": gw["max"]["events_per_cpu_second"],
        "gateway_max_events_per_s": gw["max"]["accepted_events_per_s"],
        "gateway_p99_ms_at_half_load": gw.get("0.50", {}).get("p99_ms"),
    }
    if len(results) > 1:
        bare_max = results[1]["phases"]["max"]
        report["summary"]["bare_events_per_core"] = bare_max["events_per_cpu_second"]
        report["summary"]["gateway_vs_bare_per_core"] = (gw["max"]["events_per_cpu_second"]
                                                         / bare_max["events_per_cpu_second"])
    print(table(results))
    print()
    print(json.dumps(report["summary"], indent=2) if not args.json else json.dumps(report, indent=2))
    return report


def _serve_bare(argv: Sequence[str]) -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(bare_app_factory(), host="127.0.0.1", port=args.port, workers=1, log_level="warning",
                access_log=False, server_header=False)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve_bare":
        _serve_bare(sys.argv[2:])
    else:
        main(sys.argv[1:])
