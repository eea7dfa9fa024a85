"""The ops surface against real parts: a real Prometheus (Debian's binary) scrapes a real
worker fed by the simulator on the local broker and evaluates the project's rules; every panel
query of the generated dashboards and every recording rule must return data. Then the
simulator stops, the "no events from an input topic" rule (a test copy with a short window)
fires, and a real Alertmanager delivers it to the Slack-like test server by severity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamer.app import topic_plan
from streamer.kafka_io import ensure_topic_plan, run_sync
from streamer.ops.dashboards import DASHBOARDS, DASHBOARDS_DIR, LIFECYCLE
from streamer.settings import ENV_PREFIX, Settings, settings_env
from streamer.simulate import DEVICE_SHARES
from streamer.testing import WorkerProcess
from streamer.testing_slack import FakeSlack
from tests.support.ops_servers import Alertmanager, Prometheus
from tests.support.settings import isolated_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# The simulator compresses sessions into seconds (3 s between clicks): with 5 s windows and
# 4 s step timeouts, cohort windows turn final, and sessions drop and abandon, within seconds.
# The timeouts are not a multiple of the window on purpose (the guard and the baselines must
# count every final window all the same). The simulator assigns no experiment, but it draws
# each session's device at random with known shares: an experiment reading its variant from
# the device, with those shares declared, is an A/A test whose arms the guard counts (the
# experiment panels' data) and whose split matches (no sample-ratio alert).
FUNNEL_NAME = "checkout"
EXPERIMENT_NAME = "device_split"
FUNNEL = f"""
name: {FUNNEL_NAME}
conversion_window: 1m
window: 5s
stages:
  - {{name: landing, event_type: page_view, where: {{landing: true}}, timeout: 4s}}
  - {{name: product_view, event_types: [product_view], timeout: 4s}}
  - {{name: cart, event_types: [add_to_cart], timeout: 4s}}
  - {{name: checkout, event_types: [checkout_started], timeout: 4s}}
  - {{name: payment, event_types: [payment_submitted], timeout: 4s}}
  - {{name: order, event_type: order_placed, where: {{value: {{gt: 0}}}}}}
segments: {{device: {{cap: 6}}, channel: {{cap: 8}}, utm_campaign: {{cap: 4}}}}
abandonment: [cart, checkout, payment]
experiments:
  - name: {EXPERIMENT_NAME}
    exposure: landing
    variant_from: context.device
    variants: {{{", ".join(f"{device}: {share}" for device, share in DEVICE_SHARES)}}}
    control: desktop
"""
# Beside it, the shipped lifecycle funnel (a user funnel: the unit tasks publish its figures,
# the merger shows them as the Lifecycle dashboard's gauges) over the simulator's users (40%
# of its sessions carry a user id; its channels organic and paid_search fold into other).
LIFECYCLE_FUNNEL = DEPLOY / "funnels/lifecycle/lifecycle.yaml"
LIFECYCLE_FUNNEL_NAME = "lifecycle"
SIMULATION_SECONDS = 30
SCRAPE_INTERVAL = "1s"
# What Grafana puts in place of its variables (Grafana's $__rate_interval is at least four
# scrape intervals; $__range covers the whole run).
GRAFANA_VARIABLES = {
    "$__rate_interval": "10s",
    "$__range": "5m",
    "$__interval": "2s",
    "$funnel": FUNNEL_NAME,
    "$job": "streamer",  # "All": the one job listed
    "$instance": ".*",
}
NO_EVENTS_ALERT = "StreamerNoInputEvents"
WARNINGS_TOKEN = "T000/B000/warnings"
PAGES_TOKEN = "T000/B000/pages"


def grafana_substitute(expr: str, funnel: str = FUNNEL_NAME) -> str:
    for variable, value in (GRAFANA_VARIABLES | {"$funnel": funnel}).items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a variable the test does not substitute: {expr}"
    return expr


@dataclass(frozen=True)
class NamedQuery:
    source: str  # "<dashboard> / <panel>" or "recording rule <name>"
    expr: str


def dashboard_queries() -> list[NamedQuery]:
    queries = []
    for spec in DASHBOARDS:
        dashboard = json.loads((DASHBOARDS_DIR / spec.filename).read_text())
        funnel = LIFECYCLE_FUNNEL_NAME if spec is LIFECYCLE else FUNNEL_NAME
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                source = f"{dashboard['title']} / {panel['title']} [{target['refId']}]"
                queries.append(NamedQuery(source, grafana_substitute(target["expr"], funnel)))
    return queries


def recording_rules() -> list[NamedQuery]:
    rules = yaml.safe_load((DEPLOY / "prometheus/rules/recording.yml").read_text())
    return [
        NamedQuery(f"recording rule {rule['record']}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def write_alert_rules_for_test(path: Path) -> None:
    """The project's alerting rules, the no-events one with a window and a `for` of seconds."""
    rules = yaml.safe_load((DEPLOY / "prometheus/rules/alerts.yml").read_text())
    [no_events] = [
        rule
        for group in rules["groups"]
        for rule in group["rules"]
        if rule.get("alert") == NO_EVENTS_ALERT
    ]
    assert "[5m]" in no_events["expr"], no_events["expr"]
    no_events["expr"] = no_events["expr"].replace("[5m]", "[5s]")
    no_events["for"] = "2s"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))


def write_prometheus_config(path: Path, rules: list[Path], worker_port: int, am_port: int) -> None:
    """deploy/prometheus/prometheus.yml, pointed at the test's worker and Alertmanager."""
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    config["global"].update(scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL)
    assert [Path(f).name for f in config["rule_files"]] == [r.name for r in rules]
    config["rule_files"] = [str(r) for r in rules]
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{am_port}"
    ]
    [scrape] = config["scrape_configs"]
    scrape["static_configs"][0]["targets"] = [f"127.0.0.1:{worker_port}"]
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def write_alertmanager_config(path: Path, secrets: Path, slack: FakeSlack) -> None:
    """deploy/alertmanager/alertmanager.yml with the webhook files holding FakeSlack's URLs,
    and a group wait of a second instead of half a minute."""
    config = yaml.safe_load((DEPLOY / "alertmanager/alertmanager.yml").read_text())
    tokens = {"slack-pages": PAGES_TOKEN, "slack-warnings": WARNINGS_TOKEN}
    for receiver in config["receivers"]:
        [slack_config] = receiver["slack_configs"]
        url_file = secrets / Path(slack_config["api_url_file"]).name
        url_file.write_text(slack.url(tokens[receiver["name"]]) + "\n")
        slack_config["api_url_file"] = str(url_file)
    config["route"].update(group_wait="1s", group_interval="2s")
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@dataclass
class OpsStack:
    settings: Settings
    worker: WorkerProcess
    prometheus: Prometheus
    alertmanager: Alertmanager
    slack: FakeSlack
    simulator: subprocess.Popen[bytes]
    simulator_log: Path
    simulator_ended_at: list[float]  # wall-clock time the simulator exited, once it has

    def wait_simulator(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while not self.simulator_ended_at:
            assert time.monotonic() < deadline, "simulator still running"
            time.sleep(0.2)
        log = self.simulator_log.read_text(errors="replace")
        assert self.simulator.returncode == 0, log
        return self.simulator_ended_at[0]


def note_exit(process: subprocess.Popen[bytes], ended_at: list[float]) -> None:
    process.wait()
    ended_at.append(time.time())


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsStack]:
    folder = tmp_path_factory.mktemp("ops")
    (folder / "funnels").mkdir()
    (folder / "funnels/checkout.yaml").write_text(FUNNEL)
    shutil.copy(LIFECYCLE_FUNNEL, folder / "funnels")
    settings = isolated_settings(
        kafka_bootstrap,
        f"ops-{os.urandom(5).hex()}",
        folder,
        funnels=(folder / "funnels",),
        allowed_lateness_seconds=2.0,
        idle_timeout_seconds=2.0,
    )
    run_sync(ensure_topic_plan(settings, topic_plan(settings)))
    slack = FakeSlack().start()
    (folder / "secrets").mkdir()
    write_alertmanager_config(folder / "alertmanager.yml", folder / "secrets", slack)
    alertmanager = Alertmanager(folder / "alertmanager.yml", folder / "am", folder / "am.log")
    alert_rules = folder / "alerts.yml"
    write_alert_rules_for_test(alert_rules)
    write_prometheus_config(
        folder / "prometheus.yml",
        [DEPLOY / "prometheus/rules/recording.yml", alert_rules],
        settings.web_port,
        alertmanager.port,
    )
    prometheus = Prometheus(folder / "prometheus.yml", folder / "tsdb", folder / "prom.log")
    worker = WorkerProcess(settings, folder / "worker.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(settings_env(settings))
    simulator_log = folder / "simulator.log"
    ended_at: list[float] = []
    simulator: subprocess.Popen[bytes] | None = None
    try:
        alertmanager.start()
        worker.start()
        with simulator_log.open("ab") as log:
            simulator = subprocess.Popen(
                [sys.executable, "-m", "streamer", "simulate", "--rate", "40",
                 "--duration", str(SIMULATION_SECONDS), "--seed", "5"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

        threading.Thread(target=note_exit, args=(simulator, ended_at), daemon=True).start()
        prometheus.start()
        yield OpsStack(
            settings, worker, prometheus, alertmanager, slack, simulator, simulator_log, ended_at
        )
    finally:
        if simulator is not None and simulator.poll() is None:
            simulator.kill()
            simulator.wait()
        prometheus.stop()
        worker.stop()
        alertmanager.stop()
        slack.stop()


def series_values(result: list[dict[str, Any]]) -> dict[str, float]:
    """An instant vector as ``{"label=value,...": value}``."""
    return {
        ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1])
        for r in result
    }


def worker_data_shows(results: dict[str, list[dict[str, Any]]], settings: Settings) -> list[str]:
    """What the panels must show once the worker has worked, not zeros: input on both topics,
    final cohorts entering the first stage, the first step's sessions decided, the experiment's
    control arm counted, the worker up.
    Returns what is missing."""

    def values(source_suffix: str) -> dict[str, float]:
        [source] = [s for s in results if s.endswith(source_suffix)]
        return series_values(results[source])

    missing = []
    events_in = values("Pipeline health / Events in per topic [A]")
    for topic in (settings.clickstream_topic, settings.checkout_topic):
        if not events_in.get(f"outcome=accepted,topic={topic}", 0) > 0:
            missing.append(f"events in on {topic}: {events_in}")
    entered = values("Funnel overview / Sessions entering each stage [A]")
    if not entered.get("stage=landing", 0) > 0:
        missing.append(f"sessions entering landing: {entered}")
    conversion = values("Funnel overview / Step conversion [A]").get("step=landing->product_view")
    if conversion is None or not 0 < conversion < 1:
        missing.append(f"landing->product_view conversion: {conversion}")
    # The guard counted the control arm's final cohorts (4 s timeouts in 5 s windows). Exposed
    # at the landing, whose step converts most: exposed at the cart, a CI run on a loaded
    # machine saw every arm's conversion at 0 or NaN for the whole poll.
    decided = values("Step conversion and drop-off / Decided attempts per variant [A]")
    arm = f"experiment={EXPERIMENT_NAME},step=landing->product_view,variant=desktop"
    if not decided.get(arm, 0) > 0:
        missing.append(f"decided attempts of the experiment's control: {decided}")
    buyers = values("Lifecycle / Buyers by channel [A]")
    if not sum(buyers.values()) > 0:
        missing.append(f"lifecycle buyers by channel: {buyers}")
    if values("Pipeline health / Workers up [A]") != {"": 1.0}:
        missing.append("workers up")
    return missing


# What the healthy simulated run never does, so its queries may stay at 0 (or NaN): no alert
# (so no delivery), no dead letter, no late event, no silent input, no merge error or superseded
# partial, no rebalance or restart after the start, no retraction of an abandonment, no
# excluded attempt (the shipped funnels have no exclusion step); and a consumer lag, which a
# worker that keeps up with the simulator does not have at any scrape. In 30 s of real time
# (event time too) no lifecycle buyer orders twice or churns (60 days): their ratios are 0
# (tests/integration/test_lifecycle.py checks them on months of event time).
NOT_EXERCISED = (
    "Lifecycle / Repeat rate by cohort week and horizon [A]",
    "Lifecycle / Churned share by cohort week [A]",
    "Funnel overview / Attempts excluded per step [A]",
    "Pipeline health / Consumer lag per topic [A]",
    "recording rule streamer:dead_letter:ratio_rate5m",
    "Abandonments / Cart value at risk over the chosen range [B]",  # retracted value
    "Alerts / Alert notifications by step and state [A]",
    "Alerts / Data-quality alerts [A]",
    "Alerts / Silent inputs [A]",
    "Alerts / Slack deliveries by outcome [A]",
    "Alerts / Alert delivery latency, p90 [A]",
    "Pipeline health / Dead letters by reason [A]",
    "Pipeline health / Dead-letter share per topic [A]",
    "Pipeline health / Late events [A]",
    "Pipeline health / Merger health [A]",
    "Pipeline health / Merger health [B]",
    "Pipeline health / Rebalance side effects [A]",
    "Pipeline health / Rebalance side effects [B]",
    "Pipeline health / Rebalance side effects [C]",
    "Pipeline health / Rebalance side effects [D]",
    "Pipeline health / Rebalances over the chosen range [A]",
    "Pipeline health / Restarts over the chosen range [A]",
    "Pipeline health / Slack deliveries by outcome [A]",
)


def _non_zero(result: list[dict[str, Any]]) -> bool:
    return any(n == n and n != 0 for n in series_values(result).values())


def test_every_panel_query_and_recording_rule_returns_data(stack: OpsStack) -> None:
    queries = dashboard_queries() + recording_rules()
    rule_count = len(recording_rules())
    panels = {q.source.rsplit(" [", 1)[0] for q in queries if not q.source.startswith("record")}
    deadline = time.monotonic() + 75
    # A series of zeros or NaN is data, not a number the traffic made: every query must show
    # a non-zero number at some point of the run but those about what this healthy run never
    # does (rates of the traffic rise and fall again: seen once is enough).
    required = [q.source for q in queries if not q.source.endswith(NOT_EXERCISED)]
    seen_non_zero: set[str] = set()
    settled: dict[str, list[dict[str, Any]]] | None = None
    while True:
        stack.worker.assert_running()
        stack.prometheus.assert_running()
        results = {q.source: stack.prometheus.query(q.expr) for q in queries}
        seen_non_zero.update(source for source, result in results.items() if _non_zero(result))
        empty = [source for source, result in results.items() if not result]
        missing = worker_data_shows(results, stack.settings)
        if settled is None and not empty and not missing:
            settled = results
        flat = [source for source in required if source not in seen_non_zero]
        if (settled is not None and not flat) or time.monotonic() > deadline:
            break
        time.sleep(2)
    if settled is not None:  # the checks of data at the first poll that had it all
        results = settled
        empty = []
        missing = []
    assert not empty, (
        f"{len(empty)} of {len(queries)} queries returned no data:\n"
        + "\n".join(empty)
        + f"\nworker log:\n{stack.worker.log_tail()}"
    )
    assert not missing, missing
    assert not flat, f"queries the run's traffic must move showed only zeros or NaN: {flat}"
    # For the record: which queries saw a non-zero number, which only zeros (nothing of the
    # kind happened in the run: no alert, no dead letter...), which only NaN (0/0, a quantile
    # of no observation).
    kinds: dict[str, list[str]] = {"non-zero": [], "zero": [], "NaN": []}
    for source, result in results.items():
        numbers = list(series_values(result).values())
        if source in seen_non_zero:
            kinds["non-zero"].append(source)
        elif any(n == 0 for n in numbers):
            kinds["zero"].append(source)
        else:
            kinds["NaN"].append(source)
    print(
        f"\n{len(panels)} panels ({len(queries) - rule_count} queries) and {rule_count} "
        f"recording rules: all {len(queries)} returned data; "
        + "; ".join(f"{kind} {len(sources)}: {sorted(sources)}" for kind, sources in kinds.items())
    )
    # Grafana's funnel variable lists the funnels (label_values on the same metric), the
    # Lifecycle dashboard's the lifecycle funnel only.
    for series, funnels in (
        ("streamer_funnel_sessions_entered_total", [FUNNEL_NAME, LIFECYCLE_FUNNEL_NAME]),
        (LIFECYCLE.funnels_from, [LIFECYCLE_FUNNEL_NAME]),
    ):
        names = stack.prometheus.get_json("/api/v1/label/funnel/values", **{"match[]": series})
        assert names["data"] == funnels, series
    # Prometheus evaluated every rule of the project without an error.
    groups = stack.prometheus.get_json("/api/v1/rules")["data"]["groups"]
    evaluated = [rule for group in groups for rule in group["rules"]]
    alerting = yaml.safe_load((DEPLOY / "prometheus/rules/alerts.yml").read_text())["groups"]
    alert_count = sum(len(group["rules"]) for group in alerting)
    assert len(evaluated) == rule_count + alert_count, [r["name"] for r in evaluated]
    assert all(rule["health"] == "ok" for rule in evaluated), evaluated


def test_no_events_alert_reaches_slack_through_alertmanager(stack: OpsStack) -> None:
    topic = stack.settings.clickstream_topic
    ended_at = stack.wait_simulator(timeout=SIMULATION_SECONDS + 30)

    def no_events_messages() -> list[tuple[str, float, dict[str, Any]]]:
        return [
            (request.token, request.at, request.payload)
            for request in stack.slack.requests
            if request.status == 200
            and request.payload
            and any(
                NO_EVENTS_ALERT in attachment.get("title", "") and topic in attachment["text"]
                for attachment in request.payload.get("attachments", [])
            )
        ]

    deadline = time.monotonic() + 45
    while not no_events_messages():
        assert time.monotonic() < deadline, (
            f"no Slack message for {NO_EVENTS_ALERT} {topic}; Slack saw "
            f"{stack.slack.statuses()}; prometheus alerts: "
            f"{stack.prometheus.get_json('/api/v1/alerts')['data']}\n"
            f"alertmanager log:\n{stack.alertmanager.log_tail()}"
        )
        stack.alertmanager.assert_running()
        time.sleep(0.5)
    [(token, at, payload)] = no_events_messages()[:1]
    # A warning goes to the warnings channel, and only once the input had stopped.
    assert token == WARNINGS_TOKEN
    assert at > ended_at
    [attachment] = payload["attachments"]
    assert attachment["title"] == f"[1 firing] {NO_EVENTS_ALERT}"
    assert f"no events from input topic {topic}" in attachment["text"]
    # Prometheus agrees: the alert is firing for that topic, with the severity that routed it.
    firing = [
        alert["labels"]
        for alert in stack.prometheus.get_json("/api/v1/alerts")["data"]["alerts"]
        if alert["state"] == "firing" and alert["labels"]["alertname"] == NO_EVENTS_ALERT
    ]
    assert {"alertname": NO_EVENTS_ALERT, "severity": "warning", "topic": topic} in firing
    assert not [r for r in stack.slack.requests if r.token == PAGES_TOKEN]
