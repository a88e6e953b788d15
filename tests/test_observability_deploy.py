"""The metrics dashboard compose.yaml deploys: Prometheus's config and every dashboard query pass a real
`promtool` (built from the Go module proxy), the dashboard reads only the metrics docs/OBSERVABILITY.md
catalogues, and Grafana's provisioning finds what compose mounts."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from core.settings import Settings
from orchestrion.launcher.progress import run_with_progress
from tests.test_compose import compose_environment, copy_compose_project, resolved_services

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "orchestrion.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "orchestrion.yml"
CATALOGUE = REPO / "docs" / "OBSERVABILITY.md"

PROMTOOL_PACKAGE = "github.com/prometheus/prometheus/cmd/promtool"
# The module tags Prometheus 3.16.0 as v0.316.0 (v0.<major><two-digit minor>.<patch>).
PROMTOOL_VERSION = "v0.316.0"
PROMTOOL_BUILD_TIMEOUT_S = 1800.0

# Grafana fills these in before a query reaches Prometheus; promtool gets a duration in their place.
GRAFANA_DURATIONS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


@dataclass(frozen=True)
class Metric:
    type: str
    labels: frozenset[str]


# Series Prometheus records itself for each scrape target, so no process of ours documents them.
PROMETHEUS_SERIES = {"up": Metric("gauge", frozenset())}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
RATE_FUNCTIONS = ("rate", "irate", "increase")

# The figures the dashboard exists to show: panel title -> series it must read, quantiles it must draw.
REQUIRED_PANELS: dict[str, tuple[set[str], set[float]]] = {
    "TTFT p50 / p99 by deployment": ({"orchestrion_model_ttft_seconds_bucket"}, {0.5, 0.99}),
    "Output tokens/s by deployment": ({"orchestrion_model_tokens_total"}, set()),
    "HTTP request p99 by route": ({"orchestrion_http_request_duration_seconds_bucket"}, {0.99}),
    "Queue depth by queue": ({"orchestrion_queue_depth"}, set()),
    "Task wait p99 by queue": ({"orchestrion_celery_task_wait_seconds_bucket"}, {0.99}),
    "HTTP 5xx share": ({"orchestrion_http_requests_total"}, set()),
    "Model errors/s by deployment and type": ({"orchestrion_model_errors_total"}, set()),
    "429s by reason": ({"orchestrion_http_rejections_total"}, set()),
    "Cost by tenant (USD/hour)": ({"orchestrion_model_cost_usd_total"}, set()),
    "Circuit open by deployment": ({"orchestrion_model_circuit_open"}, set()),
    "Model calls in flight by deployment": ({"orchestrion_model_in_flight"}, set()),
    "Run duration p50 / p99 by graph": ({"orchestrion_run_duration_seconds_bucket"}, {0.5, 0.99}),
    "Run outcomes/s": ({"orchestrion_run_duration_seconds_count"}, set()),
    "Active SSE streams": ({"orchestrion_sse_streams_active"}, set()),
}


@pytest.fixture(scope="session")
def promtool(pytestconfig: pytest.Config) -> Path:
    """Prometheus's promtool, built once per machine with `go install` and cached under the cache dir.

    A lock serialises parallel sessions; the build goes to a temporary dir beside the cache and is moved
    into place whole, so no session ever runs a half-written binary."""
    cached = Settings().cache_dir / "promtool" / PROMTOOL_VERSION / "promtool"
    if cached.is_file():
        return cached
    go = shutil.which("go")
    assert go, "building promtool needs the Go toolchain (>= 1.26) on PATH"
    cached.parent.mkdir(parents=True, exist_ok=True)
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    console = Console(stderr=True)
    log_path = cached.parent / "build.log"
    # The first build takes minutes: say so as it runs, not only when a test fails.
    with (cached.parent / ".lock").open("w") as lock, capture.global_and_fixture_disabled():
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.print(f"waiting for another session's build of promtool {PROMTOOL_VERSION} ({log_path})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if cached.is_file():  # built by the session this one waited for
            return cached
        with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".build-") as gobin:
            run_with_progress(
                [go, "install", f"{PROMTOOL_PACKAGE}@{PROMTOOL_VERSION}"],
                env={**os.environ, "GOBIN": gobin, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"},
                title=f"building promtool {PROMTOOL_VERSION} (once per machine)",
                log_path=log_path,
                console=console,
                timeout_s=PROMTOOL_BUILD_TIMEOUT_S,
                failure="Check `go version` (needs >= 1.26) and access to the Go module proxy.",
            )
            Path(gobin, "promtool").replace(cached)  # same filesystem: atomic
    return cached


def _run_promtool(promtool: Path, *args: str) -> str:
    result = subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


@pytest.fixture(scope="module")
def compose_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_compose_project(tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def compose_services(compose_project: Path) -> dict[str, Any]:
    return resolved_services(compose_environment(), compose_project)


def catalogue(text: str) -> dict[str, Metric]:
    """The metrics named in the tables of the "## Metrics" section: name -> type and labels."""
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|\s*(counter|gauge|histogram)\s*\|([^|]*)\|", section, re.M)
    return {
        name: Metric(kind, frozenset(filter(None, labels.replace(" ", "").split(",")))) for name, kind, labels in rows
    }


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels(dashboard) for target in panel.get("targets", [])]


def as_promql(expr: str) -> str:
    """The query as Prometheus receives it: Grafana's interval variables replaced by durations."""
    for variable, duration in GRAFANA_DURATIONS.items():
        expr = expr.replace(variable, duration)
    assert "$" not in expr, f"a Grafana variable no test replaces: {expr}"
    return expr


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_NAME = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:]|\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}


def series_in(expr: str) -> list[tuple[str, str]]:
    """(series name, the text just before it) for each series a query selects."""
    bare = _GROUPING.sub(" ", _MATCHERS.sub("{}", _STRING.sub('""', expr)))
    bare = re.sub(r"\[[^\]]*\]", "[]", bare)
    return [(m[1], bare[: m.start()]) for m in _NAME.finditer(bare) if m[1] not in _KEYWORDS]


def labels_in(expr: str) -> set[str]:
    """Labels a query groups by or matches on."""
    expr = _STRING.sub('""', expr)
    grouped = {label.strip() for clause in _GROUPING.findall(expr) for label in clause.split(",")}
    matched = {m for body in _MATCHERS.findall(expr) for m in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body)}
    return (grouped | matched) - {""}


def documented(name: str, metrics: dict[str, Metric]) -> Metric | None:
    """The catalogued metric a series belongs to (a histogram's _bucket, _sum and _count are its own)."""
    if name in metrics and metrics[name].type != "histogram":
        return metrics[name]
    base, _, suffix = name.rpartition("_")
    if suffix in ("bucket", "sum", "count") and base in metrics and metrics[base].type == "histogram":
        return metrics[base]
    return None


def test_catalogue_parser_reads_every_table() -> None:
    metrics = catalogue(CATALOGUE.read_text())
    assert metrics["orchestrion_model_ttft_seconds"] == Metric("histogram", frozenset({"deployment", "tier"}))
    assert metrics["orchestrion_http_in_flight"] == Metric("gauge", frozenset())
    assert {"orchestrion_http_requests_total", "orchestrion_queue_depth", "orchestrion_embed_seconds"} <= set(metrics)


def test_query_parser_finds_series_and_labels() -> None:
    expr = 'sum by (le, route) (rate(orchestrion_x_bucket{status=~"5..",job="a{b}"}[$__rate_interval])) > bool 0.5e3'
    assert [name for name, _ in series_in(expr)] == ["orchestrion_x_bucket"]
    assert labels_in(expr) == {"le", "route", "status", "job"}


def test_prometheus_config_passes_promtool(promtool: Path) -> None:
    output = _run_promtool(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert "SUCCESS" in output


def test_prometheus_scrapes_api_mcp_and_every_worker_replica(compose_services: dict[str, Any]) -> None:
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]}
    assert set(jobs) == {"api", "mcp", "worker"}
    # A static target would reach one replica of `--scale api=N` / `worker=N`; an A-record lookup reaches each.
    for job, port in (("api", 8400), ("mcp", 8401), ("worker", 9400)):
        assert jobs[job]["dns_sd_configs"] == [{"names": [job], "type": "A", "port": port, "refresh_interval": "15s"}]
        assert "static_configs" not in jobs[job]
    for job, port in (("api", 8400), ("mcp", 8401)):
        assert port in {p["target"] for p in compose_services[job]["ports"]}, f"{job} does not listen on {port}"
    worker = compose_services["worker"]
    assert worker["environment"]["ORCHESTRION_CELERY__METRICS_PORT"] == "9400"
    assert "9400" in worker["expose"]


def test_prometheus_image_is_the_release_promtool_checks_against(compose_services: dict[str, Any]) -> None:
    release = re.fullmatch(r"v0\.(\d)(\d\d)\.(\d+)", PROMTOOL_VERSION)
    assert release, PROMTOOL_VERSION
    image = compose_services["prometheus"]["image"]
    assert image == f"prom/prometheus:v{release[1]}.{int(release[2])}.{release[3]}"


def dashboard_rules(rules_file: Path) -> list[dict[str, str]]:
    """Write every dashboard query as a recording rule `dashboard:panel_<id>:<refId>`, as Prometheus takes it."""
    rules = [
        {"record": f"dashboard:panel_{panel['id']}:{target['refId']}", "expr": as_promql(target["expr"])}
        for panel in panels(json.loads(DASHBOARD.read_text()))
        for target in panel.get("targets", [])
    ]
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return rules


def test_every_dashboard_query_parses_with_promtool(promtool: Path, tmp_path: Path) -> None:
    rules = dashboard_rules(tmp_path / "dashboard-rules.yml")
    assert len(rules) >= len(REQUIRED_PANELS)
    output = _run_promtool(promtool, "check", "rules", str(tmp_path / "dashboard-rules.yml"))
    assert f"SUCCESS: {len(rules)} rules found" in output


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def test_dashboard_queries_compute_their_titles_over_several_processes(promtool: Path, tmp_path: Path) -> None:
    """Prometheus's own engine (`promtool test rules`) evaluates the queries over series as two processes
    (the api and a worker) report them, every 15 s: quantiles come from buckets summed over processes,
    a gauge read from shared state is not counted twice, gauges of live work add up."""
    by_title = {panel["title"]: panel["id"] for panel in panels(json.loads(DASHBOARD.read_text()))}
    dashboard_rules(tmp_path / "dashboard-rules.yml")
    processes = ({"job": "api", "instance": "api:8400"}, {"job": "worker", "instance": "10.0.0.5:9400"})
    inputs = []
    for process in processes:
        # Per 15 s: one call under 0.5 s and one between 0.5 and 1 s; so p50 = 0.5 s and p99 = 0.99 s.
        for le, values in (("0.5", "0+1x40"), ("1", "0+2x40"), ("+Inf", "0+2x40")):
            inputs.append(
                _series("orchestrion_model_ttft_seconds_bucket", values, le=le, deployment="small", **process)
            )
        inputs.append(_series("orchestrion_queue_depth", "5x40", queue="runs", **process))
        inputs.append(
            _series("orchestrion_model_cost_usd_total", "0+0.25x40", tenant="acme", deployment="small", **process)
        )
    inputs += [
        _series("orchestrion_sse_streams_active", "2x40", **processes[0]),
        _series("orchestrion_sse_streams_active", "3x40", **processes[1]),
        _series("orchestrion_http_requests_total", "0+3x40", route="/v1/runs", status="200", **processes[0]),
        _series("orchestrion_http_requests_total", "0+1x40", route="/v1/runs", status="503", **processes[0]),
        _series("orchestrion_run_duration_seconds_count", "0+15x40", graph="orchestration", outcome="success"),
    ]
    inputs += [_series("up", up, job="worker", instance=f"w{i}:9400") for i, up in enumerate(("1x40", "1x40", "0x40"))]

    def expect(title: str, ref: str, value: float, **labels: str) -> dict[str, Any]:
        # Rates are computed in floating point (119.99999999999997 for 120): compare to the thousandth.
        expr = f"round(dashboard:panel_{by_title[title]}:{ref}, 0.001)"
        rendered = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        return {"expr": expr, "eval_time": "5m", "exp_samples": [{"labels": rendered, "value": value}]}

    expectations = [
        expect("TTFT p50 / p99 by deployment", "A", 0.5, deployment="small"),
        expect("TTFT p50 / p99 by deployment", "B", 0.99, deployment="small"),
        expect("Queue depth by queue", "A", 5, queue="runs"),  # both processes read the one broker
        expect("Active SSE streams", "A", 5),
        expect("HTTP 5xx share", "A", 0.25),
        expect("Cost by tenant (USD/hour)", "A", 2 * 0.25 * 4 * 60, tenant="acme"),
        expect("Run outcomes/s", "A", 1, outcome="success"),
        expect("Scrape targets up by job", "A", 2, job="worker"),
    ]
    tests_file = tmp_path / "dashboard-tests.yml"
    tests_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": ["dashboard-rules.yml"],
                "evaluation_interval": "15s",
                "tests": [{"interval": "15s", "input_series": inputs, "promql_expr_test": expectations}],
            }
        )
    )
    output = _run_promtool(promtool, "test", "rules", str(tests_file))
    assert "SUCCESS" in output


def test_dashboard_reads_only_catalogued_metrics_as_their_type_allows() -> None:
    metrics = catalogue(CATALOGUE.read_text())
    problems = []
    for title, expr in queries(json.loads(DASHBOARD.read_text())):
        found = series_in(expr)
        assert found, f"{title}: no series in {expr}"
        labels = set(TARGET_LABELS)
        for name, before in found:
            metric = documented(name, metrics) or PROMETHEUS_SERIES.get(name)
            if metric is None:
                problems.append(f"{title}: {name} is not in the catalogue of {CATALOGUE.name}")
                continue
            labels |= metric.labels | ({"le"} if name.endswith("_bucket") else set())
            # A counter (a histogram's series too) means something only as a rate; a gauge never is one.
            in_rate = re.search(rf"\b(?:{'|'.join(RATE_FUNCTIONS)})\s*\(\s*$", before) is not None
            if in_rate != (metric.type != "gauge"):
                problems.append(f"{title}: {name} ({metric.type}) {'inside' if in_rate else 'outside'} a rate")
        unknown = labels_in(expr) - labels
        if unknown:
            problems.append(f"{title}: labels {sorted(unknown)} that its metrics do not have")
    assert not problems, "\n".join(problems)


def test_dashboard_has_the_required_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    by_title = {panel["title"]: panel for panel in panels(dashboard)}
    missing = set(REQUIRED_PANELS) - set(by_title)
    assert not missing, f"panels missing: {sorted(missing)}"
    for title, (series, quantiles) in REQUIRED_PANELS.items():
        exprs = [target["expr"] for target in by_title[title]["targets"]]
        read = {name for expr in exprs for name, _ in series_in(expr)}
        drawn = {float(q) for expr in exprs for q in re.findall(r"histogram_quantile\(\s*([\d.]+)", expr)}
        assert series <= read, f"{title} reads {sorted(read)}, not {sorted(series)}"
        assert quantiles == drawn, f"{title} draws quantiles {sorted(drawn)}, not {sorted(quantiles)}"


def test_dashboard_panels_have_unique_ids_and_query_the_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    expected = {"type": datasource["type"], "uid": datasource["uid"]}
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(ids)}"
    assert dashboard["uid"]
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == expected, f"{panel['title']}: datasource {panel['datasource']}"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: refIds repeat"
        for target in panel["targets"]:
            assert target["datasource"] == expected, f"{panel['title']} {target['refId']}: {target['datasource']}"


def test_grafana_provisioning_finds_what_compose_mounts(
    compose_project: Path, compose_services: dict[str, Any]
) -> None:
    grafana = compose_services["grafana"]
    mounts = {
        Path(volume["source"]).relative_to(compose_project): volume["target"]
        for volume in grafana["volumes"]
        if volume["type"] == "bind"
    }
    # Grafana reads provisioning from /etc/grafana/provisioning unless GF_PATHS_PROVISIONING says otherwise.
    assert mounts[Path("deploy/grafana/provisioning")] == grafana["environment"].get(
        "GF_PATHS_PROVISIONING", "/etc/grafana/provisioning"
    )
    dashboards_target = mounts[Path("deploy/grafana/dashboards")]
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == dashboards_target
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_target}/{DASHBOARD.name}"

    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    assert 9090 in {p["target"] for p in compose_services["prometheus"]["ports"]}
    # $__rate_interval spans four scrape intervals only when Grafana knows the interval.
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape
