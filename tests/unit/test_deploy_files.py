"""docker-compose.yml cannot run here (no Docker engine); keep it consistent with the code."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from streamer.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def test_compose_services_and_settings_names_are_real() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "worker", "simulator", "prometheus"}
    fields = {name.upper() for name in Settings.model_fields}
    for name in ("worker", "simulator"):
        service = services[name]
        assert (ROOT / service["build"]["dockerfile"]).is_file()
        for key in service["environment"]:
            assert key.startswith(ENV_PREFIX), key
            assert key[len(ENV_PREFIX) :] in fields, f"{name}: {key} is not a setting"
    funnels = json.loads(services["worker"]["environment"]["STREAMER_FUNNELS"])
    assert funnels == ["/app/deploy/funnels/demo"]  # the Dockerfile copies deploy/ to /app
    assert (ROOT / "deploy/funnels/demo").is_dir()
    assert "COPY deploy ./deploy" in (ROOT / "deploy/docker/Dockerfile").read_text()
    kafka_image = services["kafka"]["image"]
    assert kafka_image.endswith(":" + Settings.model_fields["kafka_version"].default)


def test_compose_prometheus_scrapes_the_worker_port() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    worker_port = compose["services"]["worker"]["environment"]["STREAMER_WEB_PORT"]
    assert targets == [f"worker:{worker_port}"]
