"""The committed dashboards are what streamer/ops/dashboards.py generates, and every query
names only metrics the worker exposes or the recording rules record."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from streamer.funnel.definition import load_funnels
from streamer.metrics import Metrics
from streamer.ops.dashboards import DASHBOARDS, DASHBOARDS_DIR, DATASOURCE_UID, main, render_all

ROOT = Path(__file__).resolve().parents[2]
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
KEYWORDS |= {"unless", "bool", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are not functions, keywords,
    label names (in ``{}`` or ``by (...)``) or durations."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare):
        follows = bare[match.end() :].lstrip()
        if not follows.startswith("(") and match.group() not in KEYWORDS:
            names.add(match.group())
    return names


def exposed_names() -> set[str]:
    """Every sample name a worker's /metrics can carry (histograms' _bucket/_sum/_count too)."""
    funnels = tuple(load_funnels([ROOT / "deploy/funnels/demo"]))
    registry = CollectorRegistry()
    Metrics.create(registry, ["clickstream", "checkout"], funnels)
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def recorded_names() -> set[str]:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules/recording.yml").read_text())
    return {rule["record"] for group in rules["groups"] for rule in group["rules"]}


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def test_committed_dashboards_match_the_code() -> None:
    rendered = render_all()
    assert {p.name for p in DASHBOARDS_DIR.glob("*.json")} == set(rendered)
    for name, text in rendered.items():
        assert (DASHBOARDS_DIR / name).read_text() == text, f"{name}: run `make dashboards`"
    assert main(["--check"]) == 0


def test_check_reports_a_drifted_dashboard(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    edited = tmp_path / DASHBOARDS[0].filename
    edited.write_text(edited.read_text().replace("Sessions entering", "Sessions entering!"))
    assert main(["--check", "--out", str(tmp_path)]) == 1


def test_every_query_names_only_real_metrics() -> None:
    known = exposed_names() | recorded_names() | {"up"}
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        dashboard = json.loads(path.read_text())
        queries = panel_queries(dashboard)
        assert queries, path.name
        for title, expr in queries:
            names = metric_names(expr)
            assert names, f"{path.name} / {title}: no metric in {expr}"
            assert names <= known, f"{path.name} / {title}: unknown {names - known}"


def test_funnel_dashboards_filter_on_the_funnel_variable() -> None:
    for spec in DASHBOARDS:
        dashboard = json.loads((DASHBOARDS_DIR / spec.filename).read_text())
        variables = [v["name"] for v in dashboard["templating"].get("list", [])]
        scoping = ["datasource", "job", "instance"]
        assert variables == ([*scoping, "funnel"] if spec.per_funnel else scoping)
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == DATASOURCE_UID
            for target in panel["targets"]:
                uses_funnel_metric = (
                    "funnel" in target["expr"] or "streamer:funnel" in target["expr"]
                )
                if spec.per_funnel and uses_funnel_metric:
                    assert 'funnel="$funnel"' in target["expr"], (panel["title"], target["expr"])


def test_every_rule_names_only_real_metrics() -> None:
    known = exposed_names() | recorded_names() | {"up"}
    for path in sorted((ROOT / "deploy/prometheus/rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                names = metric_names(rule["expr"])
                name = rule.get("record") or rule["alert"]
                assert names, f"{path.name} / {name}: no metric"
                assert names <= known, f"{path.name} / {name}: unknown {names - known}"


def test_alert_and_abandonment_series_exist_before_their_first_event() -> None:
    """increase() over a counter born at 1 says 0: the panels would miss the first alert."""
    [funnel] = load_funnels([ROOT / "deploy/funnels/demo"])
    registry = CollectorRegistry()
    Metrics.create(registry, ["clickstream", "checkout"], (funnel,))
    zero = registry.get_sample_value
    for step in funnel.step_names:
        labels = {"funnel": funnel.name, "step": step, "state": "firing", "severity": "page"}
        assert zero("streamer_alerts_total", labels) == 0.0
    tracking = {"funnel": funnel.name, "step": "tracking", "state": "firing"}
    assert zero("streamer_alerts_total", {**tracking, "severity": "warning"}) == 0.0
    for stage in funnel.abandonment:
        labels = {"funnel": funnel.name, "stage": stage}
        assert zero("streamer_abandonments_total", labels) == 0.0
        assert zero("streamer_abandonment_retractions_total", labels) == 0.0
    for subject, name in [("topic", "clickstream"), ("event_type", "add_to_cart")]:
        labels = {"funnel": funnel.name, "subject": subject, "name": name}
        assert zero("streamer_tracking_silent", labels) == 0.0


def test_no_datasource_uid_is_hard_coded() -> None:
    """Imported into a Grafana whose Prometheus has another uid, every panel, query and
    variable follows the `datasource` variable (issue 30)."""
    for spec in DASHBOARDS:
        text = (DASHBOARDS_DIR / spec.filename).read_text()
        assert "streamer-prometheus" not in text, spec.filename
        dashboard = json.loads(text)
        (source,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
        assert (source["type"], source["query"]) == ("datasource", "prometheus")


def test_every_series_is_narrowed_to_the_job_and_raw_ones_to_the_instance_variables() -> None:
    for spec in DASHBOARDS:
        dashboard = json.loads((DASHBOARDS_DIR / spec.filename).read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                for name in metric_names(target["expr"]):
                    # Recorded series sum over instances and keep the job.
                    scope = 'job=~"$job"' if ":" in name else 'job=~"$job",instance=~"$instance"'
                    assert f"{name}{{{scope}" in target["expr"], (panel["title"], target["expr"])
