"""docker-compose.yml cannot run here (no Docker engine); keep it consistent with the code and
with the Prometheus, Alertmanager and Grafana files it mounts."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from streamer.ops.dashboards import DASHBOARDS
from streamer.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("worker-1", "worker-2")


def compose_services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def mounts(service: dict) -> dict[str, str]:
    """Container path -> host path (relative to the repository) of a service's bind mounts."""
    pairs = (volume.split(":")[:2] for volume in service.get("volumes", []))
    return {container: host.removeprefix("./") for host, container in pairs}


def test_compose_services_and_settings_names_are_real() -> None:
    services = compose_services()
    assert set(services) == {
        "kafka",
        *WORKERS,
        "simulator",
        "prometheus",
        "alertmanager",
        "grafana",
    }
    fields = {name.upper() for name in Settings.model_fields}
    for name in (*WORKERS, "simulator"):
        service = services[name]
        assert (ROOT / service["build"]["dockerfile"]).is_file()
        for key in service["environment"]:
            assert key.startswith(ENV_PREFIX), key
            assert key[len(ENV_PREFIX) :] in fields, f"{name}: {key} is not a setting"
    for name in WORKERS:
        funnels = json.loads(services[name]["environment"]["STREAMER_FUNNELS"])
        assert funnels == ["/app/deploy/funnels/demo"]  # the Dockerfile copies deploy/ to /app
    # Two members of one group: the same app id, each its own static instance id.
    assert [services[w]["environment"]["STREAMER_INSTANCE_ID"] for w in WORKERS] == list(WORKERS)
    assert (ROOT / "deploy/funnels/demo").is_dir()
    assert "COPY deploy ./deploy" in (ROOT / "deploy/docker/Dockerfile").read_text()
    kafka_image = services["kafka"]["image"]
    assert kafka_image.endswith(":" + Settings.model_fields["kafka_version"].default)


def test_compose_prometheus_scrapes_both_workers_and_loads_the_rules() -> None:
    services = compose_services()
    prometheus_mounts = mounts(services["prometheus"])
    assert prometheus_mounts["/etc/prometheus"] == "deploy/prometheus"
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    scrape = config["scrape_configs"][0]
    assert scrape["job_name"] == "streamer"  # the rules select up{job="streamer"}
    ports = {w: services[w]["environment"]["STREAMER_WEB_PORT"] for w in WORKERS}
    assert scrape["static_configs"][0]["targets"] == [f"{w}:{ports[w]}" for w in WORKERS]
    for rule_file in config["rule_files"]:
        assert (ROOT / "deploy/prometheus" / rule_file).is_file(), rule_file
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]
    assert "127.0.0.1:9093:9093" in services["alertmanager"]["ports"]


def test_compose_alertmanager_reads_its_webhooks_from_mounted_files() -> None:
    service = compose_services()["alertmanager"]
    config_path = next(a.split("=", 1)[1] for a in service["command"] if "config.file" in a)
    assert mounts(service)[config_path] == "deploy/alertmanager/alertmanager.yml"
    config = yaml.safe_load((ROOT / "deploy/alertmanager/alertmanager.yml").read_text())
    secrets_dir = next(c for c, host in mounts(service).items() if host.startswith("secrets/"))
    for receiver in config["receivers"]:
        for slack in receiver["slack_configs"]:
            assert "api_url" not in slack, "a webhook URL is a secret: use api_url_file"
            assert slack["api_url_file"].startswith(secrets_dir + "/")
    assert "secrets/" in (ROOT / ".gitignore").read_text().splitlines()


def test_compose_grafana_provisions_the_datasource_and_every_dashboard() -> None:
    service = compose_services()["grafana"]
    grafana_mounts = mounts(service)
    provisioning = ROOT / grafana_mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    [datasource] = datasources["datasources"]
    # the dashboards name no uid: their datasource variable preselects the default Prometheus
    assert (datasource["type"], datasource["isDefault"]) == ("prometheus", True)
    assert datasource["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards/streamer.yml").read_text())
    [provider] = providers["providers"]
    dashboards_dir = ROOT / grafana_mounts[provider["options"]["path"]]
    assert {p.name for p in dashboards_dir.glob("*.json")} == {d.filename for d in DASHBOARDS}
