#!/usr/bin/env bash
# mypy over the import namespace, through its symlinked view (scripts/namespace_view.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
view=$(bash scripts/namespace_view.sh typecheck)
cd "$view" && MYPYPATH=. "${MYPY:-mypy}" --config-file ../../pyproject.toml -p selfreward_vlm
