#!/usr/bin/env bash
# The import namespace as one folder: the build maps the repository's folders into
# `selfreward_vlm` (setup.py), which tools that walk a package's folder (mypy, import-linter)
# cannot follow through the editable-install hook. Builds build/<name>/selfreward_vlm as
# symlinks and prints build/<name>. Usage: scripts/namespace_view.sh NAME
set -euo pipefail
cd "$(dirname "$0")/.."
view=build/$1
rm -rf "$view" && mkdir -p "$view/selfreward_vlm"
for f in selfreward/*.py selfreward/py.typed; do ln -s "$PWD/$f" "$view/selfreward_vlm/"; done
for d in core client service trainer tiny world; do ln -s "$PWD/$d" "$view/selfreward_vlm/$d"; done
echo "$PWD/$view"
