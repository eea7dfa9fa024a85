"""`streamer worker`: the start-up checks (streamer.startup), then Faust's worker."""

from __future__ import annotations

import logging

import click

from streamer.cli._common import cli, fail_cleanly, kafka_ready, settings_of
from streamer.cli.funnels import checked_funnels
from streamer.cli.kafka import worker_topic_plan
from streamer.kafka_io import ensure_topic_plan, run_sync
from streamer.startup import check_source_partitions, tune_garbage_collector


# --- worker ------------------------------------------------------------------------------
@cli.command("worker")
@click.pass_context
@fail_cleanly
def worker(ctx: click.Context) -> None:
    """Run a streamer worker (Faust): ingest, funnel state, /metrics on the web port."""
    import faust

    from streamer.app import create_app, worker_access
    from streamer.kafka_access import require_access

    settings = settings_of(ctx)
    log = logging.getLogger("streamer.worker")
    log.info("settings: %s", settings.masked())
    # A typo in a funnel file stops it before any Kafka.
    checked_funnels(settings, settings.funnels)
    kafka_ready(settings)
    run_sync(ensure_topic_plan(settings, worker_topic_plan(settings)))
    check_source_partitions(settings)
    app = create_app(settings)
    # Faust meets a missing ACL only when it first uses that topic, as a crash with a
    # traceback: check every ACL the worker needs before it starts.
    run_sync(require_access(settings, worker_access(app)))
    log.info("metrics on http://%s:%d/metrics", settings.web_host, settings.web_port)
    tune_garbage_collector()
    faust.Worker(
        app.faust, loglevel=settings.log_level, redirect_stdouts=False
    ).execute_from_commandline()
