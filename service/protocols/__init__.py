"""Wire models of each protocol the service speaks besides its native API (`core.schemas`, which
the client shares): OpenAI/vLLM completions and scoring (`openai`), chat completions
(`openai_chat`), OpenRLHF's remote reward model (`openrlhf`), and the pair viewer's summary
endpoint (`viewer`)."""
