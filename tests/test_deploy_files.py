"""The Prometheus and Grafana files of deploy/ parse, and name only metrics the service exports.

promtool is not available here, so the rule and dashboard files are checked the way they break in
practice: a YAML/JSON error, a rule without its fields, or an expression naming a metric that does
not exist (renamed, misspelt), which would make an alert silently never fire.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

# Importing the modules registers every metric family of the service in the default registry.
import common_operations.grpc.metrics
import common_operations.infra.events.metrics
import common_operations.infra.metrics.tasks
import common_operations.web.metrics  # noqa: F401
from common_operations.infra.metrics.temporal_sdk import SDK_METRICS_USED

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\b((?:co|common_operations|temporal)_[a-z0-9_]+)\b")
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
}


def exported_names() -> set[str]:
    """Every sample name the service's registry can export, and the SDK's metrics deploy/ uses."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    for name in SDK_METRICS_USED:
        # The SDK's histograms are exported with buckets, its gauges as they are.
        names.update({name, f"{name}_bucket", f"{name}_count", f"{name}_sum"})
    return names


def metric_names(expr: str) -> set[str]:
    # Label values ("common-operations-worker") use dashes; quoted strings are not metric names.
    return set(METRIC.findall(re.sub(r'"[^"]*"', '""', expr)))


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def alert_rules() -> list[dict[str, Any]]:
    doc = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    with (DEPLOY / "grafana" / "dashboards" / "common-operations.json").open() as f:
        loaded: dict[str, Any] = json.load(f)
    return loaded


def test_prometheus_config_scrapes_api_and_workers_with_a_token_and_loads_the_rules() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"common-operations-api", "common-operations-worker"}
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"
        assert job["authorization"]["type"] == "Bearer"
        assert job["authorization"]["credentials_file"].startswith("/etc/prometheus/secrets/")
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_alert_rules_are_complete_and_cover_the_issue() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    # A task type failing, tasks stuck, outbox lag, worker not polling (issue 10, section 2).
    assert {"TaskTypeFailing", "TasksStuck", "OutboxLagHigh", "WorkerNotPolling"} <= names
    assert len(names) == len(rules), "alert names must be unique"
    for rule in rules:
        assert rule["expr"].strip() and rule["for"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_rules_name_only_exported_metrics(rule: dict[str, Any]) -> None:
    used = metric_names(rule["expr"])
    assert used, "an alert must watch a metric"
    assert used <= exported_names(), f"unknown metrics: {sorted(used - exported_names())}"


def test_dashboard_panels_name_only_exported_metrics() -> None:
    board = dashboard()
    exported = exported_names()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    for expr in exprs:
        unknown = metric_names(expr) - exported
        assert not unknown, f"{expr!r} names unknown metrics {sorted(unknown)}"
    for variable in board["templating"]["list"]:
        assert metric_names(variable["definition"]) <= exported


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    board = dashboard()
    text = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    for metric in (
        "co_tasks_in_flight",  # tasks by status
        "co_tasks_finished_total",  # throughput, failure rate by type
        "co_task_duration_seconds_bucket",  # p95 durations
        "temporal_worker_task_slots_available",  # worker slots
        "co_tasks_stuck",
        "common_operations_outbox_lag_seconds",
    ):
        assert metric in text, metric
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_grafana_provisioning_points_at_the_dashboard_and_its_datasource() -> None:
    datasources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    uids = {ds["uid"] for ds in datasources["datasources"]}
    board = dashboard()
    used = {p["datasource"]["uid"] for p in board["panels"] if "datasource" in p}
    assert used <= uids
    providers = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "common-operations.yml")
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_compose_observability_profile_is_opt_in_and_loopback_only() -> None:
    compose = load_yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    for name in ("prometheus", "grafana", "metrics-token"):
        assert services[name]["profiles"] == ["observability"], name
        for port in services[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port
    mounts = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    for path in (
        "deploy/prometheus/prometheus.yml",
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/dashboards",
    ):
        assert f"./{path}" in mounts
        assert (ROOT / path).exists()
