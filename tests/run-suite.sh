#!/usr/bin/env bash
# The whole suite in two pytest processes side by side: the broker tests (tests/integration,
# tests/e2e) at normal priority, the CPU-only unit tests (tests/unit) at nice 10 beside them.
# The broker tests mostly wait on Kafka and on the workers they start (the machine sits near a
# load of 1 through them), so the unit tests fill the idle core instead of running after them;
# at nice 10 they yield the CPU whenever a broker test wants it, so its timings are unchanged.
# With arguments (`make test PYTEST_ARGS=...`) it runs one plain pytest with them instead.
# Exit status: non-zero when either half failed; the unit half's output is printed at the end.
set -uo pipefail
bin="${BIN:-.venv/bin}"
common=(-q -p no:cacheprovider)

if [ "$#" -gt 0 ]; then
    exec "$bin/pytest" "${common[@]}" --durations=25 "$@"
fi

unit_dir="$(mktemp -d -t streamer-unit-tests.XXXXXX)"
trap 'rm -rf "$unit_dir"' EXIT
# --basetemp of its own: two pytest sessions must not number (and prune) one temp folder.
nice -n 10 "$bin/pytest" "${common[@]}" --durations=10 --basetemp="$unit_dir/tmp" tests/unit \
    >"$unit_dir/unit.log" 2>&1 &
unit_pid=$!

"$bin/pytest" "${common[@]}" --durations=25 tests/integration tests/e2e
broker_status=$?

wait "$unit_pid"
unit_status=$?
echo
echo "==================== tests/unit (ran beside the broker tests, nice 10) ===================="
cat "$unit_dir/unit.log"
echo "broker tests: exit ${broker_status}; unit tests: exit ${unit_status}"
[ "$broker_status" -eq 0 ] && [ "$unit_status" -eq 0 ]
