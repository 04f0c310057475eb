#!/usr/bin/env bash
# Install SEKMET (a FHIR R4 test server) into its own virtualenv for tests/integration.
# Idempotent: re-running with the venv already in place only checks the pinned version.
# SEKMET pins its own fhir.resources, so it must not share the service's environment.
# Usage: bash .ci/sekmet.sh [VENV_DIR]   (default: $SEKMET_VENV or /tmp/sekmet-venv)
# Prints the venv's python path; export it as SEKMET_PYTHON for the integration tests.
set -euo pipefail

venv="${1:-${SEKMET_VENV:-/tmp/sekmet-venv}}"
version="0.1.1"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
fi
if ! "$venv/bin/python" -m pip show sekmet-fhir 2>/dev/null | grep -qx "Version: $version"; then
    "$venv/bin/python" -m pip install -q "sekmet-fhir==$version" >&2
fi
echo "$venv/bin/python"
