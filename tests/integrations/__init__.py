"""Compatibility protocols (OpenAI/vLLM, OpenRLHF) and the TRL/verl/harness integrations."""
