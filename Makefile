# The two commands of the README:
#   make demo   install everything, then a live demo on a local Kafka broker
#   make test   install everything, then lint, type-check, check the Prometheus rules and the
#               Alertmanager route, and run the whole test suite
# Needs python3 >= 3.11, Java 17+ and Maven (the broker is resolved from Maven Central once);
# Prometheus and Alertmanager come from Debian's packages (`make ops-tools`, as root or sudo).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install demo test lint typecheck unit bench mutation clean ops-tools ops-check dashboards docs

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "streamer needs Python >= 3.11, found " + sys.version.split()[0])'
	@command -v java >/dev/null || { echo "error: java not found: install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre)"; exit 2; }
	@command -v mvn >/dev/null || { echo "error: mvn not found: install Apache Maven (Debian: apt-get install maven)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/streamer demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check streamer tests benchmarks
	$(BIN)/ruff format --check streamer tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

# promtool, prometheus, amtool and prometheus-alertmanager, when missing.
ops-tools:
	@bash deploy/install-ops-tools.sh

# The Grafana dashboards, from streamer/ops/dashboards.py (commit the JSON it writes).
dashboards: $(STAMP)
	$(BIN)/python -m streamer.ops.dashboards

# docs/configuration.md, from the settings' field descriptions (commit what it writes).
docs: $(STAMP)
	$(BIN)/python -m streamer.config_doc

ops-check: ops-tools
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/rules/*.yml
	promtool test rules deploy/prometheus/tests/*.yml
	amtool check-config deploy/alertmanager/alertmanager.yml
	amtool config routes test --config.file=deploy/alertmanager/alertmanager.yml \
		--verify.receivers=slack-pages severity=page alertname=StreamerWorkerDown
	amtool config routes test --config.file=deploy/alertmanager/alertmanager.yml \
		--verify.receivers=slack-warnings severity=warning alertname=StreamerNoInputEvents

# The broker tests and, beside them at nice 10, the unit tests (tests/run-suite.sh says why).
test: lint typecheck ops-check
	BIN=$(BIN) bash tests/run-suite.sh $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# Mutation score of the pure core (docs/mutation-testing.md; slow, not part of `make test`):
# mutmut over the four files of [tool.mutmut] in pyproject.toml, at low priority. It leaves
# pytest 8 in the venv (mutmut 3.7 needs it). MUTATION_ARGS narrows the run, e.g.
# MUTATION_ARGS='"streamer.funnel.clock*"'.
mutation: $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,mutation]"
	rm -rf mutants
	nice -n 19 $(BIN)/mutmut run --max-children 2 $(MUTATION_ARGS)
	$(BIN)/python tests/support/mutation_summary.py

clean:
	-$(BIN)/streamer kafka down
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache mutants
