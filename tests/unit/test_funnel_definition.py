from __future__ import annotations

from pathlib import Path

import pytest

from streamer.funnel.catalogue import EventCatalogue
from streamer.funnel.definition import (
    FunnelDefinition,
    FunnelDefinitionError,
    load_funnel,
    load_funnels,
    parse_duration_ms,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy/funnels"


def test_the_shipped_funnels_load() -> None:
    checkout = load_funnel(DEPLOY / "checkout.yaml")
    assert [s.name for s in checkout.stages] == [
        "landing",
        "product_view",
        "cart",
        "checkout",
        "payment",
        "order",
    ]
    assert checkout.step_timeout_ms(2) == 30 * 60_000
    assert checkout.step_timeout_ms(3) == 15 * 60_000
    # Every step has a timeout: the funnel's step_timeout where the stage names none.
    assert checkout.step_timeout_ms(0) == checkout.default_step_timeout_ms == 30 * 60_000
    assert checkout.finality_lag_ms == 30 * 60_000
    assert checkout.stages[5].matches("order_placed", {"value": 10})
    assert not checkout.stages[5].matches("order_placed", {"value": 0})
    assert not checkout.stages[5].matches("order_placed", {"value": "ten"})
    assert [s.name for s in checkout.segments] == ["device", "channel", "country", "payment_method"]
    assert load_funnel(DEPLOY / "replay/otto.yaml").conversion_window_ms == 30 * 86_400_000
    assert [f.name for f in load_funnels([DEPLOY])] == ["checkout"]


@pytest.mark.parametrize(
    ("text", "expected"), [("90s", 90_000), ("1.5h", 5_400_000), ("500ms", 500), (30, 30_000)]
)
def test_durations(text: object, expected: int) -> None:
    assert parse_duration_ms(text) == expected


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "funnel.yaml"
    path.write_text(text)
    return path


def test_errors_name_the_file_the_line_and_the_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "name: shop\nconversion_window: 10x\nstages:\n"
        "  - name: landing\n    event_type: page_view\n"
        "  - name: cart\n    event_type: add_to_cart\n    timeout: soon\n",
    )
    with pytest.raises(FunnelDefinitionError) as caught:
        load_funnel(path)
    message = str(caught.value)
    assert f"{path}:2: conversion_window: " in message
    assert f"{path}:8: stages.1.timeout: " in message
    assert "'soon' is not a duration" in message


def test_unknown_keys_bad_yaml_and_duplicates(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: shop\nconversion_window: 1h\nstagez: []\n")
    with pytest.raises(FunnelDefinitionError, match=r":3: stagez: Extra inputs"):
        load_funnel(path)
    broken = _write(tmp_path, "name: [unclosed\n")
    with pytest.raises(FunnelDefinitionError, match=r"funnel.yaml:2: not valid YAML"):
        load_funnel(broken)
    dup = _write(
        tmp_path,
        "name: shop\nconversion_window: 1h\nstages:\n"
        "  - {name: a, event_type: page_view}\n  - {name: a, event_type: search}\n",
    )
    with pytest.raises(FunnelDefinitionError, match="stage names must be unique"):
        load_funnel(dup)
    with pytest.raises(FunnelDefinitionError, match="window must divide a day"):
        load_funnel(
            _write(
                tmp_path,
                "name: s\nconversion_window: 1h\nwindow: 7m\nstages:\n"
                "  - {name: a, event_type: page_view}\n  - {name: b, event_type: search}\n",
            )
        )


def test_an_event_type_may_fill_several_stages_except_in_an_unordered_funnel(
    tmp_path: Path,
) -> None:
    path = tmp_path / "twice.yaml"
    stages = "stages:\n  - {name: a, event_type: page_view}\n  - {name: b, event_type: page_view}\n"
    path.write_text(f"name: twice\nconversion_window: 1h\n{stages}")
    assert [s.event_types for s in load_funnel(path).stages] == [("page_view",)] * 2
    path.write_text(f"name: twice\nconversion_window: 1h\norder: unordered\n{stages}")
    with pytest.raises(
        FunnelDefinitionError,
        match=r"twice.yaml:6: stages.1.event_types: 'page_view' is in stages 'a' and 'b'; an "
        "unordered funnel's steps have no order",
    ):
        load_funnel(path)


@pytest.mark.parametrize(
    ("extra", "where", "problem"),
    [
        ("order: strict\nreentry: latest", ":3: reentry:", "reentry: latest is for ordered"),
        ("reentry: sometimes", ":2: reentry:", "Input should be 'first' or 'latest'"),
        ("hold: [product, product]", ":2: hold:", "names a field twice"),
        ("hold: [a.b]", ":2: hold.0:", "should match pattern"),
        ("order: unordered\nhold: [product]", ":3: hold:", "no first step to fix"),
        (
            "segments:\n  device: {attribution: {step: 3}}",
            ":3: segments.0.attribution.step:",
            "step 3: the funnel has 2 stages (1 to 2)",
        ),
        (
            "segments:\n  device: {attribution: middle_touch}",
            ":3: segments.0.attribution",
            "first_touch",
        ),
    ],
)
def test_re_entry_hold_and_attribution_errors_name_the_line(
    tmp_path: Path, extra: str, where: str, problem: str
) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(
        f"name: f\n{extra}\nconversion_window: 1h\nstages:\n"
        "  - {name: a, event_type: page_view}\n  - {name: b, event_type: add_to_cart}\n"
    )
    with pytest.raises(FunnelDefinitionError) as caught:
        load_funnel(path)
    assert f"f.yaml{where}" in str(caught.value)
    assert problem in str(caught.value)


def test_held_fields_must_be_carried_by_the_stages_events(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(
        "name: f\nconversion_window: 1h\nhold: [sku, skus, context.devise]\nstages:\n"
        "  - {name: a, event_type: page_view}\n  - {name: b, event_type: add_to_cart}\n"
    )
    catalogue = EventCatalogue(
        {"page_view": {"sku": "string"}, "add_to_cart": {}}, context=frozenset({"device"})
    )
    with pytest.raises(FunnelDefinitionError) as caught:
        load_funnel(path, known_events=catalogue)
    assert str(caught.value) == (
        f"{path}:3: hold.1: no event of the stages has a property 'skus'; did you mean 'sku'?; "
        f"{path}:3: hold.2: no context field 'devise' is declared; did you mean 'device'?"
    )


def test_the_step_timeout_is_capped_by_the_conversion_window(tmp_path: Path) -> None:
    path = tmp_path / "short.yaml"
    path.write_text(
        "name: short\nconversion_window: 10m\nstep_timeout: 1h\nstages:\n"
        "  - {name: a, event_type: page_view}\n  - {name: b, event_type: add_to_cart}\n"
    )
    assert load_funnel(path).step_timeout_ms(0) == 10 * 60_000


def test_describe_names_every_rule_the_funnel_uses() -> None:
    """`streamer funnel check` and `funnel show` print this: each option of the third edition
    is visible, so a reader can tell two funnels on the same stages apart."""
    definition = FunnelDefinition.model_validate(
        {
            "name": "f",
            "conversion_window": "60s",
            "reentry": "latest",
            "hold": ["product"],
            "stages": [
                {"name": "land", "event_type": "page_view"},
                {"name": "cart", "event_type": "add_to_cart", "optional": True},
                {"name": "pay", "event_type": "payment_submitted"},
            ],
            "exclusions": [{"event_types": ["refund"], "between": ["cart", "pay"]}],
            "segments": {
                "device": {"attribution": "last_touch"},
                "payment_method": {"attribution": {"step": 3}},
                "country": {},
            },
        }
    )
    text = definition.describe()
    assert "2. cart (optional): add_to_cart" in text
    assert "excluded by refund between cart and pay" in text
    assert "re-entry: latest" in text
    assert "holds constant: product" in text
    assert "device (context.device, top 10, last_touch)" in text
    assert "payment_method (property.payment_method, top 10, at step 3)" in text
    assert "country (context.country, top 10)" in text
