"""The tests' own helpers, in one package (the documented testing API that ships with the
package is ``streamer.testing``; see CONTRIBUTING.md). Fixtures stay in ``conftest.py`` files,
where pytest finds them.

- ``settings``: settings no other test shares (topics, group, port, data dir).
- ``kafka_waits``: waiting on a worker by its metrics, topics read to a count, end markers,
  every stage's input committed to its end (its outputs then on the broker).
- ``pipeline_run``: a worker run end to end (produce, close every window, read the outputs).
- ``alert_pipeline``: the alert scenario of the end-to-end tests (planted payment incident).
- ``stage_harness``: the sessions stage in memory, with in-memory sinks (unit tests, benchmarks).
- ``core_run``, ``compare``: the pure core run over events, compared with the SQL oracle
  (and a plan's decoded lines as the oracle's input).
- ``traffic``, ``funnels``: generated traffic and funnel files.
- ``lifecycle_records``: generated lifecycle users as the shop's events; published lifecycle
  records and gauges in the SQL oracle's shape.
- ``experiment_shop``: A/B traffic and the funnel of the experiment guardrails' tests.
- ``datasets``: where recorded datasets are (the OTTO sample).
- ``ops_servers``: real Prometheus and Alertmanager processes.
- ``acl_table``, ``faust_delivery_app``, ``mutation_summary``: one user each (ACL checks, the
  bare Faust delivery baseline, ``make mutation``'s summary).
"""
