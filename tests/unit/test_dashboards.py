"""compose's Prometheus scrape config and Grafana dashboard agree with what the processes
export: a renamed metric, or a scrape port no process listens on, fails here rather than as
an empty panel in production."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from panelboard.transport.metrics import CostMeters
from panelboard.transport import meters

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def exported() -> set[str]:
    """Every series name the broker, the workers and the ledger can serve."""
    names = {"panelboard_queue_pending", "panelboard_queue_unacked"}
    for registry in (meters.REGISTRY, CostMeters().registry):
        for family in registry.collect():
            names.add(family.name)
            names.update(f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_sum", "_count"))
    return names


def test_every_dashboard_query_reads_a_metric_panelboard_exports():
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "panelboard.json").read_text())
    assert dash["uid"] == "panelboard" and dash["panels"]
    names = exported()
    used = set()
    for panel in dash["panels"]:
        assert panel["title"] and panel["targets"], panel
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus"  # the provisioned data source
            series = set(re.findall(r"\b(panelboard_[a-z_]+)", target["expr"]))
            assert series, f"panel {panel['title']!r} reads no panelboard metric"
            missing = series - names
            assert not missing, f"panel {panel['title']!r} reads {sorted(missing)}, which nothing exports"
            used |= series
    # The metrics operators asked for are on the board.
    for want in ("panelboard_fallbacks_total", "panelboard_retries_total", "panelboard_health_state", "panelboard_queue_pending",
                 "panelboard_pool_in_flight", "panelboard_pool_paused", "panelboard_dead_letters_total", "panelboard_spend_usd_total"):
        assert want in used, want
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"


def test_prometheus_scrapes_the_port_every_compose_process_serves():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j["dns_sd_configs"][0] for j in scrape["scrape_configs"]}
    for service in ("broker", "worker", "ledger"):
        cmd = compose["services"][service]["command"]
        port = int(cmd[cmd.index("--metrics-port") + 1])
        assert cmd[cmd.index("--metrics-host") + 1] == "0.0.0.0"  # reachable by the prometheus container
        assert jobs[service]["names"] == [service] and jobs[service]["port"] == port
    volume = compose["services"]["prometheus"]["volumes"][0]
    assert volume.startswith("./deploy/prometheus.yml:")
    for service in ("prometheus", "grafana", "postgres", "nats-1"):
        image = compose["services"][service].get("image") or compose["x-nats"]["image"]
        assert re.search(r":v?\d+\.\d+(\.\d+)?(-\w+)?$", image), f"{service}: {image} is not pinned to a version"
