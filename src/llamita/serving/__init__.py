"""The HTTP server: OpenAI- and Ollama-compatible routes over one engine thread.

from llamita.serving.app import create_app
from llamita.serving.engine_loop import EngineLoop
"""
