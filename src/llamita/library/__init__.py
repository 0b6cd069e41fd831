"""Models by name: parsing names (names.py), the short-name table (catalog.py), pulling from
the Hugging Face Hub (hub.py, pull.py), and the local library: llamita's own names (store.py),
the Hugging Face cache and Ollama's store (local.py, ollama.py), `rm` and `cp` (manage.py).

Sits beside `weights` below the engine: the loader asks `local.resolve_model` what a name
means; only the CLI pulls. Imports nothing from engine, model or tokenizer."""
