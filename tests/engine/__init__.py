"""The model engine: scoring and decoding against each model's own forward, the scheduler."""
