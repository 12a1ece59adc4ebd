"""LoRA adapters outside the model: uploaded adapter files (`files`) and the registry that
replicas share (`shared`). Loading them into the model is `service.engine.adapters`; their
HTTP routes are `service.routes.adapters`."""
