"""docs/configuration.md is what streamer.config_doc writes from the settings' descriptions."""

from __future__ import annotations

from streamer import config_doc
from streamer.settings import ENV_PREFIX, Settings


def test_committed_page_matches_the_settings() -> None:
    expected = config_doc.render()
    actual = config_doc.PAGE.read_text()
    assert actual == expected, "docs/configuration.md drifted from streamer/settings.py: make docs"


def test_every_setting_has_a_row_with_its_variable() -> None:
    page = config_doc.render()
    for name in Settings.model_fields:
        assert f"| `{name}` | `{ENV_PREFIX}{name.upper()}` |" in page


def test_secrets_are_marked_and_defaults_do_not_name_this_machine() -> None:
    page = config_doc.render()
    rows = {line.split("|")[1].strip(" `"): line for line in page.splitlines() if "| `" in line}
    for name in ("kafka_sasl_password", "kafka_ssl_key_password", "slack_webhook_url"):
        assert "**secret**" in rows[name]
    assert "**secret**" not in rows["kafka_sasl_username"]
    assert str(config_doc.ROOT) not in page
    assert "`~/.cache/streamer/kafka`" in rows["kafka_cache_dir"]
    assert '`["deploy/funnels"]`' in rows["funnels"]
