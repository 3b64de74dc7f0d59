#!/bin/sh
# Offline validation of the Kubernetes manifests: yamllint, then kubernetes-validate
# --strict against the schemas it ships (no cluster, no network). Exits non-zero on any
# problem. Needs yamllint (Debian) and kubernetes-validate (pip install kubernetes-validate).
set -eu
cd "$(dirname "$0")/../.."
K8S_VERSION="${K8S_VERSION:-1.30.0}"
manifests="ops/k8s/midasflow.yaml"
status=0

run() {
    echo "+ $*"
    if ! "$@"; then
        echo "FAILED: $*" >&2
        status=1
    fi
}

for tool in yamllint kubernetes-validate; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "missing $tool (yamllint: apt-get install yamllint; kubernetes-validate: pip install kubernetes-validate)" >&2
        exit 2
    fi
done

run yamllint -s -c ops/.yamllint $manifests
run kubernetes-validate --strict -k "$K8S_VERSION" $manifests

# The container's entrypoint is a shell script inside the manifest: check its syntax too.
script=$(mktemp)
trap 'rm -f "$script"' EXIT
if python3 - "$manifests" "$script" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
sts = next(d for d in docs if d["kind"] == "StatefulSet")
command = sts["spec"]["template"]["spec"]["containers"][0]["command"]
assert command[:2] == ["/bin/sh", "-ec"], command[:2]
open(sys.argv[2], "w").write(command[2])
PY
then
    run sh -n "$script"
else
    echo "FAILED: extracting the entrypoint script" >&2
    status=1
fi

if [ "$status" -eq 0 ]; then echo "ops/k8s: OK"; else echo "ops/k8s: FAILED" >&2; fi
exit "$status"
