"""The public Python API: `LLM` (generate, chat, embed, score, stream; what `from llamita import
LLM` gives) and `run_agent` (the tool-calling loop). It drives the runtime in `engine/`; the
command line, the server, the glass box and RAG build on it."""
