"""Funnels are checked against the events there are (the tracking plan, else the built-in
contract) before anything connects to Kafka: `streamer funnel check` and `streamer worker`
refuse an unknown event, an unknown property, a context field the plan does not declare and
a filter of the wrong type, one line each with file:line."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamer.app import topic_plan, worker_events
from streamer.cli import cli
from streamer.decoders import catalogue_of, contract_catalogue
from streamer.funnel.catalogue import check_known_events
from streamer.funnel.definition import load_funnel
from streamer.resources import deploy_dir
from streamer.settings import load_settings

SHOP = """\
name: shop
conversion_window: 1h
stages:
  - {name: product, event_types: [Product Viewd]}
  - {name: cart, event_types: [Product Added], where: {price: {gt: free}}}
  - {name: order, event_types: [Order Completed], where: {totl: {gt: 0}}}
segments:
  device: {source: context.device, cap: 6}
  sku: {source: property.skus}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STREAMER_TRACKING_PLAN", "preset:segment")
    monkeypatch.setenv("STREAMER_KAFKA_BOOTSTRAP", f"127.0.0.1:{_free_port()}")  # no broker
    path = tmp_path / "shop.yaml"
    path.write_text(SHOP)
    monkeypatch.setenv("STREAMER_FUNNELS", str(path))
    return path


@pytest.mark.parametrize("command", [["funnel", "check"], ["worker"]])
def test_a_funnel_is_refused_against_the_plan_before_kafka(shop: Path, command: list[str]) -> None:
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    for expected in [
        f"{shop}:4: stages.0.event_types: unknown event type 'Product Viewd'; "
        "did you mean 'Product Viewed'?",
        f"{shop}:5: stages.1.where.price: price is number: 'free' can never match",
        f"{shop}:6: stages.2.where.totl: no event of Order Completed has a property 'totl'; "
        "did you mean 'total'?",
        f"{shop}:8: segments.0.source: no context field 'device' is declared; "
        "did you mean 'device_type'?",
        f"{shop}:9: segments.1.source: no event has a property 'skus'; did you mean 'sku'?",
    ]:
        assert expected in output, output
    assert "no Kafka broker" not in output  # refused before any connection


def test_a_plan_error_is_one_line_before_the_funnels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\nenvelope: {event_name: event}\nevents: {}\n")
    monkeypatch.setenv("STREAMER_TRACKING_PLAN", str(plan))
    result = CliRunner().invoke(cli, ["funnel", "check"])
    assert result.exit_code == 2
    assert f"tracking plan: {plan}:" in result.output


def test_the_default_funnel_fits_the_contract_and_preset_streamer() -> None:
    from streamer.decoders import tracking_plan
    from streamer.settings import Settings

    checkout = load_funnel(deploy_dir() / "funnels" / "checkout.yaml")
    assert check_known_events(checkout, contract_catalogue()) == []
    preset = tracking_plan(Settings(tracking_plan="preset:streamer"))
    assert check_known_events(checkout, catalogue_of(preset)) == []


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ('{landing: "yes"}', "landing is boolean: 'yes' can never match"),
        ("{landing: {gt: true}}", "landing is boolean: it has no order for gt"),
        ("{page: 3}", "page is string: 3 can never match"),
    ],
)
def test_filters_of_the_wrong_type_on_the_contract(
    tmp_path: Path, where: str, problem: str
) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(
        "name: f\nconversion_window: 1h\nstages:\n"
        f"  - {{name: a, event_types: [page_view], where: {where}}}\n"
        "  - {name: b, event_types: [order_placed]}\n"
    )
    problems = check_known_events(load_funnel(path), contract_catalogue())
    assert [message for _, message in problems] == [problem]


def test_a_user_funnel_is_checked_and_run_by_the_worker_replay_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(
        "name: users\nfollows: user\nconversion_window: 14d\nstages:\n"
        "  - {name: visit, event_types: [page_view]}\n"
        "  - {name: order, event_types: [order_placed]}\n"
    )
    monkeypatch.setenv("STREAMER_FUNNELS", str(path))
    monkeypatch.setenv("STREAMER_KAFKA_BOOTSTRAP", f"127.0.0.1:{_free_port()}")  # no broker
    assert CliRunner().invoke(cli, ["funnel", "check"]).exit_code == 0
    funnels, _ = worker_events(load_settings())
    assert [funnel.name for funnel in funnels] == ["users"]
    assert load_settings().units_topic in topic_plan(load_settings(), funnels)
    # No broker: each stops there, not at the funnel.
    for command in (["worker"], ["replay", "--from", "-1h", "--to", "now"]):
        result = CliRunner().invoke(cli, command)
        assert "follows: user" not in result.output
        assert "Kafka" in result.output or "kafka" in result.output, result.output
