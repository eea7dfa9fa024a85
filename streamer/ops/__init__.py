"""What operators run streamer with: Grafana dashboards as code (:mod:`streamer.ops.dashboards`).

The Prometheus rules and the Alertmanager route live beside the dashboards in ``deploy/``.
"""
