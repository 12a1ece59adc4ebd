"""Wire models of the foreign protocols the service speaks (OpenAI/vLLM)."""
