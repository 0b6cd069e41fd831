"""The HTTP server (FastAPI): OpenAI- and Ollama-compatible routes, the web chat page, metrics,
and feedback kept in SQLite.

    app.py / server.py       the app and `llamita serve`; state.py what the routes share
    model_pool.py            the models served: loaded on demand, keep_alive, LRU under
                             --max-memory; each loaded model decodes on its own engine thread
                             (engine_loop.py) with continuous batching
    protocol.py              the request bodies as pydantic models (the /openapi.json schema)
    openai_routes.py, ollama_routes.py, responses_routes.py, embedding_routes.py,
    library_routes.py, create_routes.py, collection_routes.py, glass_routes.py, ui_routes.py
                             the routes, one file per API family
    errors.py                every error in OpenAI's shape; store.py the SQLite chat store
"""
