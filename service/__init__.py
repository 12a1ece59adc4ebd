"""The selfreward scoring service (FastAPI): policy VLM + LoRA adapters + CLIP on one box."""
