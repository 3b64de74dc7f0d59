#!/usr/bin/env bash
# Validates ops/openapi.json (the OpenAPI 3.1 document of the public API) with
# openapi-spec-validator. Installs nothing: `pip install openapi-spec-validator` first.
# That the file is current (generated from src/api/openapi.rs) is checked by
# `cargo test --lib openapi`; `MIDASFLOW_WRITE_OPENAPI=1 cargo test --lib openapi` rewrites it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v openapi-spec-validator >/dev/null 2>&1; then
  echo "openapi-spec-validator is not installed (pip install openapi-spec-validator)" >&2
  exit 2
fi
openapi-spec-validator ops/openapi.json
