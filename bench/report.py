"""What ``headwater bench`` writes: the figures of a run as JSON, a markdown table and a chart.

The parts' own results (the dicts their ``main`` returns) go in unchanged under ``parts``; :func:`figures` reads
them into one list of :class:`Figure` rows (median of the runs, target, the side-by-side ratio where the figure
has a baseline, pass/fail), which both the table and the chart use. Files, in ``out`` (default bench/results):

- ``<UTC timestamp>.json``: everything, machine included;
- ``latest.md``: the machine and the table (tracked in git: the README quotes it);
- ``latest.png``: throughput bars (flow vs bare vs quixstreams, gateway vs ceiling, sinks) and e2e percentiles.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results"
QUIX_PYTHON = REPO / ".venv-quix" / "bin" / "python"

#: Targets from the issues (gateway 50k events/s per core; flow ≥ 0.5× bare Bytewax; Bytewax ≥ 1.5× quixstreams on
#: the same pipeline; end to end p95 < 3 s to ClickHouse).
GATEWAY_EVENTS_PER_CORE = 50_000
FLOW_FULL_OVER_BARE = 0.5
BYTEWAX_OVER_QUIX = 1.5
E2E_P95_CLICKHOUSE_S = 3.0


@dataclass
class Target:
    """A pass condition: ``median`` (or the ``ratio``) compared with ``value`` by ``op`` (``>=``, ``<``, ``==``)."""

    op: str
    value: float
    on: str = "median"

    def met(self, figure: Figure) -> bool | None:
        actual = figure.median if self.on == "median" else figure.ratio
        if actual is None:
            return None
        return {">=": actual >= self.value, "<": actual < self.value, "==": actual == self.value}[self.op]

    def describe(self, unit: str) -> str:
        shown = _number(self.value, "×" if self.on == "ratio" else unit)
        return f"{'ratio ' if self.on == 'ratio' else ''}{self.op.replace('>=', '≥').replace('==', '=')} {shown}"


@dataclass
class Figure:
    """One row of the table.

    :param part: gateway, flow, sinks or e2e
    :param name: what was measured
    :param unit: events/s, rows/s, s, ms, µs, MiB, × or events
    :param runs: the value of each run
    :param ratio: the side-by-side ratio against the baseline named by ``ratio_label`` (median of per-run ratios)
    """

    part: str
    name: str
    unit: str
    runs: list[float]
    target: Target | None = None
    ratio: float | None = None
    ratio_label: str = ""
    median: float | None = field(init=False)

    def __post_init__(self) -> None:
        values = [v for v in self.runs if v is not None]
        self.median = statistics.median(values) if values else None

    @property
    def passed(self) -> bool | None:
        return self.target.met(self) if self.target else None


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# --- from the parts' results to figures ----------------------------------------------------------------------
def figures(parts: dict[str, Any]) -> list[Figure]:
    """The table's rows for whichever parts ran (see :mod:`bench.cli` for the shape of ``parts``)."""
    out: list[Figure] = []
    if "gateway" in parts:
        out += _gateway_figures(parts["gateway"])
    if "flow" in parts:
        out += _flow_figures(parts["flow"])
    if "sinks" in parts:
        out += _sinks_figures(parts["sinks"])
    if "e2e" in parts:
        out += _e2e_figures(parts["e2e"])
    return out


def _gateway_figures(runs: list[dict[str, Any]]) -> list[Figure]:
    summaries = [r["summary"] for r in runs]
    ratios = [s.get("gateway_vs_bare_per_core") for s in summaries]
    return [
        Figure("gateway", "gateway accepted events/s per core", "events/s",
               [s["gateway_events_per_core"] for s in summaries], Target(">=", GATEWAY_EVENTS_PER_CORE),
               _median(ratios), "× bare ceiling per core"),
        Figure("gateway", "bare ceiling (read body, produce) events/s per core", "events/s",
               [s.get("bare_events_per_core") for s in summaries]),
        Figure("gateway", "gateway accepted events/s (wall clock, closed loop)", "events/s",
               [s["gateway_max_events_per_s"] for s in summaries]),
        Figure("gateway", "gateway p99 latency at half the max load", "ms",
               [s.get("gateway_p99_ms_at_half_load") for s in summaries]),
    ]


def _flow_figures(flow: dict[str, Any]) -> list[Figure]:
    bytewax, quix, memory = flow.get("bytewax", []), flow.get("quix", []), flow.get("memory", {})
    bw_full = [v for r in bytewax for v in r["full"]]
    bw_bare = [v for r in bytewax for v in r["bare"]]
    bw_ratios = [v for r in bytewax for v in r["ratios"]]
    q_full = [v for r in quix for v in r["full"]]
    q_bare = [v for r in quix for v in r["bare"]]
    q_ratios = [v for r in quix for v in r["ratios"]]
    out = [
        Figure("flow", "full flow, Bytewax", "events/s", bw_full, Target(">=", FLOW_FULL_OVER_BARE, "ratio"),
               _median(bw_ratios), "× bare Bytewax"),
        Figure("flow", "bare pass-through, Bytewax", "events/s", bw_bare),
    ]
    if quix:
        out += [
            Figure("flow", "full flow, quixstreams", "events/s", q_full, ratio=_median(q_ratios),
                   ratio_label="× bare quixstreams"),
            Figure("flow", "bare pass-through, quixstreams", "events/s", q_bare),
            Figure("flow", "full flow Bytewax / full flow quixstreams", "×",
                   [b / q for b, q in zip(bw_full, q_full)], Target(">=", BYTEWAX_OVER_QUIX)),
        ]
    bw_cpu = [v for r in bytewax for v in r.get("full_cpu_us", [])]
    q_cpu = [v for r in quix for v in r.get("full_cpu_us", [])]
    if bw_cpu:
        out.append(Figure("flow", "CPU per event, full flow, Bytewax", "µs", bw_cpu))
    if q_cpu:
        out.append(Figure("flow", "CPU per event, full flow, quixstreams", "µs", q_cpu))
    if bw_cpu and q_cpu and len(bw_cpu) == len(q_cpu):
        # CPU time is far less disturbed by other load on the machine than wall-clock rates: a cross-check
        out.append(Figure("flow", "CPU per event, quixstreams full / Bytewax full", "×",
                          [q / b for b, q in zip(bw_cpu, q_cpu)]))
    labels = (("bytewax_full", "full flow, Bytewax"), ("bytewax_bare", "bare pass-through, Bytewax"),
              ("quix_full", "full flow, quixstreams"), ("quix_bare", "bare pass-through, quixstreams"))
    for key, text in labels:
        if memory.get(key):
            ratio = None
            if key == "bytewax_full" and memory.get("quix_full"):
                ratio = _median([b / q for b, q in zip(memory["bytewax_full"], memory["quix_full"])])
            out.append(Figure("flow", f"peak RSS, {text}", "MiB", memory[key], ratio=ratio,
                              ratio_label="× quixstreams full" if ratio is not None else ""))
    return out


def _sinks_figures(sinks: dict[str, Any]) -> list[Figure]:
    out = []
    batch = sinks.get("batch")
    for name, label in (("clickhouse", "ClickHouse"), ("snowflake", "Snowflake (fakesnow)")):
        values = [r["rows_per_second"][name][str(batch)] for r in sinks.get("warehouses", [])
                  if name in r.get("rows_per_second", {})]
        if values:
            out.append(Figure("sinks", f"{label} rows/s, {batch:,}-row batches", "rows/s", values))
        cpu = [r["client_cpu_rows_per_second"][name][str(batch)] for r in sinks.get("warehouses", [])
               if name in r.get("client_cpu_rows_per_second", {})]
        if cpu:  # the writer's own cost, the part the flow's worker pays
            out.append(Figure("sinks", f"{label} rows per client CPU-second", "rows/s", cpu))
    lake = sinks.get("lake", {}).get("lake", {}).get(str(sinks.get("lake_batch", batch)))
    if lake:
        out.append(Figure("sinks", f"lake (Parquet on moto S3) rows/s, {sinks.get('lake_batch', batch):,}-row batches",
                          "rows/s", lake["write"]))
        out.append(Figure("sinks", "lake rows/s, replay after a restart", "rows/s", lake["replay"]))
        if lake.get("cpu_write"):
            out.append(Figure("sinks", "lake rows per writer CPU-second", "rows/s", lake["cpu_write"]))
    return out


def _e2e_figures(e2e: dict[str, Any]) -> list[Figure]:
    out = []
    runs = e2e.get("runs", [])
    for sink in ("clickhouse", "snowflake", "lake"):
        per_run = [r["sinks"][sink] for r in runs if sink in r["sinks"]]
        if not per_run:
            continue
        for q in ("p50", "p95", "p99"):
            target = Target("<", E2E_P95_CLICKHOUSE_S) if (sink, q) == ("clickhouse", "p95") else None
            out.append(Figure("e2e", f"accept → visible in {sink}, {q}", "s", [r[f"{q}_s"] for r in per_run], target))
        out.append(Figure("e2e", f"accepted events never visible in {sink}", "events",
                          [r["missing"] for r in per_run], Target("==", 0)))
    return out


# --- the machine -------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, kernel, Python and the versions of the stream libraries compared."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions = {}
    for package in ("bytewax", "confluent-kafka", "headwater"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions.update(_quix_versions())
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram_gib, "kernel": platform.release(),
            "python": platform.python_version(), "versions": versions}


def _quix_versions() -> dict[str, str | None]:
    """quixstreams and the confluent-kafka it runs with, from ``.venv-quix`` (``None`` when it is not there)."""
    if not QUIX_PYTHON.exists():
        return {"quixstreams": None, "confluent-kafka (quixstreams venv)": None}
    code = ("from importlib.metadata import version as v; import json; "
            "print(json.dumps([v('quixstreams'), v('confluent-kafka')]))")
    try:
        done = subprocess.run([str(QUIX_PYTHON), "-c", code], capture_output=True, text=True, timeout=30)
        quix, kafka = json.loads(done.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {"quixstreams": None, "confluent-kafka (quixstreams venv)": None}
    return {"quixstreams": quix, "confluent-kafka (quixstreams venv)": kafka}


# --- rendering -----------------------------------------------------------------------------------------------------
def _number(value: float | None, unit: str = "", suffix: bool = True) -> str:
    """``value`` as the table shows it: seconds and ratios with 2 decimals, MiB and ms with 1, counts and rates
    whole with thousands separators; followed by ``unit`` when ``suffix``."""
    if value is None:
        return "–"
    if unit in ("s", "×"):
        text = f"{value:.2f}"
    elif unit in ("MiB", "ms", "µs"):
        text = f"{value:,.1f}"
    else:
        text = f"{value:,.0f}"
    if not suffix or not unit:
        return text
    return f"{text}×" if unit == "×" else f"{text} {unit}"


def markdown(result: dict[str, Any]) -> str:
    """``latest.md``: the machine, then one table row per figure."""
    m = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    lines = [
        "# Benchmark results",
        "",
        f"`headwater bench {result['command']}` at {result['started_at']} (wall time {result['wall_seconds']:.0f} s"
        f"{', --quick' if result.get('quick') else ''}, --runs {result['runs']}).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}; {versions}.",
        "",
        "The machine is shared and small: absolute figures are noisy. Ratios come from runs taken side by side in "
        "the same invocation; medians are over the runs listed.",
        "",
        "| figure | median | runs | target | ratio | result |",
        "|---|---:|---|---|---:|---|",
    ]
    for f in (Figure(**_figure_args(d)) for d in result["figures"]):
        runs = ", ".join(_number(v, f.unit, suffix=False) for v in f.runs)
        ratio = f"{f.ratio:.2f} {f.ratio_label}" if f.ratio is not None else ""
        target = f.target.describe(f.unit) if f.target else ""
        verdict = {True: "pass", False: "**fail**", None: ""}[f.passed]
        lines.append(f"| {f.part}: {f.name} | {_number(f.median, f.unit)} | {runs} | {target} | {ratio} | {verdict} |")
    errors = result.get("errors") or {}
    if errors:
        lines += ["", "Parts that failed:", ""] + [f"- {part}: {text}" for part, text in errors.items()]
    return "\n".join(lines) + "\n"


def _figure_args(d: dict[str, Any]) -> dict[str, Any]:
    args = {k: v for k, v in d.items() if k not in ("median", "passed")}
    if args.get("target") is not None:
        args["target"] = Target(**args["target"])
    return args


def plot(result: dict[str, Any], path: Path) -> Path:
    """``latest.png``: four panels (flow, gateway, sinks, e2e); a part that did not run says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {(d["part"], d["name"]): d for d in result["figures"]}

    def medians(part: str, names: list[tuple[str, str]]) -> tuple[list[str], list[float]]:
        labels, values = [], []
        for name, label in names:
            d = by_name.get((part, name))
            if d and d["median"] is not None:
                labels.append(label)
                values.append(d["median"])
        return labels, values

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    fig.suptitle(f"headwater bench {result['command']} — {result['started_at']} — "
                 f"{result['machine']['cores']} cores, {result['machine']['cpu'][:40]}", fontsize=10)
    panels = [
        (axes[0][0], "flow: events/s, Kafka → Kafka", "events/s", medians("flow", [
            ("bare pass-through, Bytewax", "bare\nBytewax"), ("full flow, Bytewax", "full\nBytewax"),
            ("bare pass-through, quixstreams", "bare\nquixstreams"), ("full flow, quixstreams", "full\nquixstreams")])),
        (axes[0][1], "gateway: accepted events/s per core", "events/s per core", medians("gateway", [
            ("gateway accepted events/s per core", "gateway"),
            ("bare ceiling (read body, produce) events/s per core", "bare ceiling")])),
        (axes[1][0], "sinks: rows/s (wall clock)", "rows/s", medians("sinks", [
            (d["name"], _short_sink_label(d["name"])) for d in result["figures"]
            if d["part"] == "sinks" and _short_sink_label(d["name"])])),
    ]
    colours = ["#4C72B0", "#55A868", "#C44E52", "#8172B2"]
    for ax, title, unit, (labels, values) in panels:
        ax.set_title(title, fontsize=10)
        if not values:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        bars = ax.bar(labels, values, color=[colours[i % len(colours)] for i in range(len(values))])
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        ax.set_ylabel(unit)
        ax.tick_params(axis="x", labelsize=8)
    ax = axes[1][1]
    ax.set_title("end to end: accept → visible (s), median of runs", fontsize=10)
    sinks = [s for s in ("clickhouse", "snowflake", "lake") if ("e2e", f"accept → visible in {s}, p50") in by_name]
    if not sinks:
        ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        width = 0.26
        for i, q in enumerate(("p50", "p95", "p99")):
            values = [by_name[("e2e", f"accept → visible in {s}, {q}")]["median"] or 0.0 for s in sinks]
            bars = ax.bar([x + (i - 1) * width for x in range(len(sinks))], values, width, label=q,
                          color=colours[i])
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7)
        ax.axhline(E2E_P95_CLICKHOUSE_S, color="grey", linestyle="--", linewidth=1)
        ax.text(-0.45, E2E_P95_CLICKHOUSE_S, "p95 target, ClickHouse", va="bottom", ha="left", fontsize=7,
                color="grey", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
        ax.set_xticks(range(len(sinks)), sinks)
        ax.set_ylabel("seconds")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _short_sink_label(name: str) -> str:
    if "CPU-second" in name:
        return ""
    for prefix, label in (("ClickHouse", "ClickHouse"), ("Snowflake", "Snowflake\n(fakesnow)"),
                          ("lake rows/s, replay", "lake replay\n(moto S3)"), ("lake", "lake\n(moto S3)")):
        if name.startswith(prefix):
            return label
    return name


def build_result(command: str, parts: dict[str, Any], errors: dict[str, str], started_at: dt.datetime,
                 wall_seconds: float, runs: int, quick: bool) -> dict[str, Any]:
    """The JSON document of a run: parts' raw results, the figures, the machine."""
    return {
        "command": command, "started_at": started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "wall_seconds": round(wall_seconds, 1), "runs": runs, "quick": quick, "argv": sys.argv[1:],
        "machine": machine(), "figures": [_figure_dict(f) for f in figures(parts)], "errors": errors, "parts": parts,
    }


def _figure_dict(f: Figure) -> dict[str, Any]:
    d = asdict(f)
    d["passed"] = f.passed
    return d


def write(result: dict[str, Any], out: Path = DEFAULT_OUT) -> dict[str, Path]:
    """Write ``<timestamp>.json``, ``latest.md`` and ``latest.png`` into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.strptime(result["started_at"], "%Y-%m-%d %H:%M:%S UTC").strftime("%Y%m%dT%H%M%SZ")
    paths = {"json": out / f"{stamp}.json", "markdown": out / "latest.md", "png": out / "latest.png"}
    paths["json"].write_text(json.dumps(result, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown(result))
    plot(result, paths["png"])
    return paths
