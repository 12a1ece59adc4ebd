"""The serving layer: what the service does for a request, as plain async functions that take
the app state and a request's data and return results (wire models and the batcher's work
items, for the timing headers). No FastAPI here.

The HTTP routes are thin translators over it, one module per protocol, as vLLM's `serving_*`
classes sit under its API routers: the native routes (`routes.scoring`, `routes.generate`),
OpenRLHF's `/get_reward` and the OpenAI-compatible routes call the same functions.

- `common`: limits, images, usage, timing; `models`: which model a request names;
- `scoring`: log-probs, CLIP, calibrated and implicit rewards;
- `reward`: the reward of one whole response in the operator's mode (OpenRLHF's `/get_reward`);
- `generate`: candidates through the engine (`/v1/generate`, chat completions);
- `text`: vLLM's reading of a raw prompt (every token scored, top-k, echo + generation);
- `completions`, `chat`: the OpenAI completions and chat completions APIs.
"""
