"""The tracking plan: the shop's own events, declared in YAML, compiled once into a validator.

``model`` (the plan), ``load`` (YAML -> plan, errors as file:line), ``compile`` (plan ->
``CompiledPlan.validate``), ``schemas`` (plan -> JSON Schemas), ``cli`` (``streamer plan``),
``presets/`` (streamer's own envelope, Segment, PostHog, Snowplow). See docs/tracking-plan.md.
"""
