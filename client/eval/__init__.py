"""Benchmarks of the papers, run against the service: CHAIR on COCO, Object HalBench, POPE.

Pure client code (no torch): greedy answers come from `/v1/generate`, so any model or adapter
the service holds can be evaluated from a laptop. `selfreward eval --help` lists the commands.
"""
