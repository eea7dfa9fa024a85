"""The pure funnel core: no Faust, Kafka, HTTP or Prometheus; time is always an argument."""
