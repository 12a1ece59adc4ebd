#!/usr/bin/env bash
# mypy over the import namespace: the build maps folders into `selfreward_vlm` (setup.py), which
# mypy cannot follow through the editable-install hook, so it checks a symlinked view of it.
set -euo pipefail
cd "$(dirname "$0")/.."
view=build/typecheck
rm -rf "$view" && mkdir -p "$view/selfreward_vlm"
for f in selfreward/*.py selfreward/py.typed; do ln -s "$PWD/$f" "$view/selfreward_vlm/"; done
for d in core client service trainer tiny world; do ln -s "$PWD/$d" "$view/selfreward_vlm/$d"; done
cd "$view" && MYPYPATH=. "${MYPY:-mypy}" --config-file ../../pyproject.toml -p selfreward_vlm
