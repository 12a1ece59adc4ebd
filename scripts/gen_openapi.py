"""Write `openapi/openapi.json` from the app (`build_app(...).openapi()`).

Run after changing any route or wire schema:

    .venv/bin/python scripts/gen_openapi.py

`tests/api/test_openapi.py` fails while the committed file is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "openapi" / "openapi.json"


def render_openapi() -> str:
    """The OpenAPI document as committed: sorted keys, indent 2, trailing newline.

    Building the app loads nothing (models load in the lifespan, which never runs here), and
    the document depends on no setting, so the output is the same on every machine.
    """
    sys.path.insert(0, str(ROOT))
    from selfreward_vlm.service.app import build_app
    from selfreward_vlm.service.settings import ServiceSettings

    settings = ServiceSettings.model_construct(model="openapi")  # no env, no validation needed
    schema: dict[str, Any] = build_app(settings).openapi()
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_openapi(), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
