"""Serve the API: `python -m selfreward_vlm.service --model ID_OR_DIR --clip NAME|DIR [...]`."""

from selfreward_vlm.service.cli import main

if __name__ == "__main__":
    main()
