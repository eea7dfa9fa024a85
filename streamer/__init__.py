"""streamer: an event-streaming funnel drop-off detector (Kafka + Faust + Prometheus)."""

__version__ = "0.1.0"
