#!/bin/sh
# Offline validation of the compose stack: `docker-compose config -q` (no engine needed;
# nothing is built, pulled or started), yamllint, and promtool on prometheus.yml when
# promtool is installed. Exits non-zero on any problem.
set -eu
cd "$(dirname "$0")/../.."
compose="ops/compose/docker-compose.yml"
status=0

run() {
    echo "+ $*"
    if ! "$@"; then
        echo "FAILED: $*" >&2
        status=1
    fi
}

for tool in docker-compose yamllint; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "missing $tool (apt-get install docker-compose yamllint)" >&2
        exit 2
    fi
done

run docker-compose -f "$compose" config -q
run yamllint -s -c ops/.yamllint "$compose" ops/compose/prometheus.yml
if command -v promtool >/dev/null 2>&1; then
    # rule_files names the container path /etc/prometheus/rules/*.yml (a bind mount of
    # ops/prometheus/rules): here that glob matches nothing, so the rules themselves are
    # not checked by this step.
    run promtool check config ops/compose/prometheus.yml
else
    echo "promtool not found: skipping promtool check config"
fi

if [ "$status" -eq 0 ]; then echo "ops/compose: OK"; else echo "ops/compose: FAILED" >&2; fi
exit "$status"
