"""JSON Schemas generated from a plan, and the `streamer plan check` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from streamer.cli import cli
from streamer.events import EVENT_MODELS
from streamer.plan.load import load_plan
from streamer.plan.schemas import event_slug, render_plan_schemas

ROOT = Path(__file__).resolve().parents[2]
PLAN_EXAMPLES = Path(__file__).parent / "plan_examples"


@pytest.fixture(scope="module")
def default_schemas() -> dict[str, dict[str, Any]]:
    return render_plan_schemas(load_plan("preset:streamer"))


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_default_plan_schemas_accept_the_committed_examples(
    default_schemas: dict[str, dict[str, Any]], event_type: str
) -> None:
    example = json.loads((ROOT / f"schemas/examples/{event_type}.json").read_text())
    schema = default_schemas[f"events/{event_type}.schema.json"]
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(example, schema, cls=jsonschema.Draft202012Validator)
    jsonschema.validate(example, default_schemas["envelope.schema.json"])
    for bad in (example | {"coupon": "X"}, example | {"event_type": "nope"},
                {**example, "context": {**example["context"], "locale": "de"}}):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema, cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize("preset", ["streamer", "segment", "posthog", "snowplow"])
def test_preset_examples_match_the_preset_schemas(preset: str) -> None:
    loaded = load_plan(f"preset:{preset}")
    schemas = render_plan_schemas(loaded)
    envelope = schemas["envelope.schema.json"]
    for line in (PLAN_EXAMPLES / f"{preset}.jsonl").read_text().splitlines():
        document = json.loads(line)
        jsonschema.validate(document, envelope, cls=jsonschema.Draft202012Validator)
    assert len(schemas) == len(loaded.plan.events) + 1


def test_event_slug() -> None:
    assert event_slug("Product Viewed") == "product_viewed"
    assert event_slug("$pageview") == "pageview"
    assert event_slug("!!!") == "event"


def test_plan_check_prints_one_line_per_plan_and_writes_schemas(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["plan", "check", "preset:streamer", "--schemas", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (
        "preset:streamer: plan version 1, 12 events, topics: any; unplanned events "
        "dead_letter, properties dead_letter"
    )
    assert lines[1] == f"  13 JSON Schemas written to {tmp_path / 'out'}"
    assert (tmp_path / "out/events/order_placed.schema.json").exists()


def test_plan_check_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    plan = tmp_path / "shop.yaml"
    plan.write_text("version: 1\nenvelope:\n  event_name: event\nevents: {}\n")
    result = CliRunner().invoke(cli, ["plan", "check", str(plan)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"error: {plan}:2: envelope.event_id: Field required")


def test_the_documented_plan_checks(tmp_path: Path) -> None:
    """docs/tracking-plan.md's example plan loads, and its printed outputs are what runs."""
    text = (ROOT / "docs/tracking-plan.md").read_text()
    body = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "shop.yaml").write_text(body)
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path):
        Path("shop.yaml").write_text(body)
        result = runner.invoke(cli, ["plan", "check", "shop.yaml", "--schemas", "build/schemas"])
        assert result.exit_code == 0, result.output
        for line in result.output.splitlines():
            assert line in text
        Path("broken.yaml").write_text(body.replace("type: integer, min: 1", "type: int, min: 1"))
        result = runner.invoke(cli, ["plan", "check", "broken.yaml"])
        assert result.exit_code == 2
        assert result.output.strip() in text


def _schemas(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, ["schemas", *args], env=env)


@pytest.mark.parametrize("plan", [[], ["--plan", "preset:streamer"]])
def test_the_default_contract_gives_the_committed_schemas(plan: list[str]) -> None:
    result = _schemas("check", *plan)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{ROOT / 'schemas'} matches ")


def test_schemas_write_and_check_follow_the_configured_plan(tmp_path: Path) -> None:
    env = {"STREAMER_TRACKING_PLAN": "preset:segment"}
    written = _schemas("write", "--dir", str(tmp_path), env=env)
    assert written.exit_code == 0, written.output
    assert "from the tracking plan preset:segment" in written.output
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json")}
    plan_files = set(render_plan_schemas(load_plan("preset:segment")))
    assert plan_files <= files
    assert "envelope.schema.json" in files
    assert "records/replay_report.schema.json" in files  # the records do not depend on a plan
    assert not any(name.startswith("examples/") and "product" in name for name in files)
    assert _schemas("check", "--dir", str(tmp_path), env=env).exit_code == 0
    # Drift: a plan file changed by hand, and the contract's files where a plan is configured.
    viewed = tmp_path / "events/product_viewed.schema.json"
    viewed.write_text(viewed.read_text().replace('"price"', '"cost"'))
    drift = _schemas("check", "--dir", str(tmp_path), env=env)
    assert drift.exit_code == 1
    assert "drift: events/product_viewed.schema.json: out of date" in drift.output
    assert "streamer schemas write --plan preset:segment" in drift.output
    contract = _schemas("check", "--dir", str(tmp_path))
    assert contract.exit_code == 1
    assert "drift: event.schema.json: missing" in contract.output
    assert "drift: envelope.schema.json: not generated by any model" in contract.output


def test_a_plans_schemas_need_a_folder_of_their_own() -> None:
    result = _schemas("write", env={"STREAMER_TRACKING_PLAN": "preset:posthog"})
    assert result.exit_code == 2
    assert "the tracking plan preset:posthog is set: give --dir" in result.output


def test_schemas_with_a_broken_plan_is_one_line(tmp_path: Path) -> None:
    plan = tmp_path / "shop.yaml"
    plan.write_text("version: 1\nenvelope:\n  event_name: event\nevents: {}\n")
    result = _schemas("check", "--dir", str(tmp_path), "--plan", str(plan))
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"error: {plan}:2: envelope.event_id: Field required")
