"""Shared wire schemas and pure reward math (no torch, no fastapi)."""
