"""`python -m trainer train|iterate ...` (the same commands as `selfreward train|iterate`)."""

from selfreward_vlm.trainer.cli import build_app

if __name__ == "__main__":
    build_app()()
