"""Serving models: OpenAI- and Ollama-compatible APIs, model endpoints and a web page (`firstepoch serve`)."""
from firstepoch.serve.app import create_app, serve
from firstepoch.serve.registry import Registry, load_registry
from firstepoch.serve.streaming import Limits

__all__ = ["Limits", "Registry", "create_app", "load_registry", "serve"]
