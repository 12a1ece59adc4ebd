#!/usr/bin/env bash
# import-linter's contracts (pyproject.toml [tool.importlinter]) over the import namespace,
# through its symlinked view (scripts/namespace_view.sh). Exit 1 names each broken contract and
# the import chain that breaks it.
set -euo pipefail
cd "$(dirname "$0")/.."
config=$PWD/pyproject.toml
view=$(bash scripts/namespace_view.sh import-layers)
cd "$view" && PYTHONPATH=. "${LINT_IMPORTS:-lint-imports}" --no-cache "$config"
