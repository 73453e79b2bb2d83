"""`spot serve`: one frozen model answers every library prompt over HTTP.

    from spot.serve import Engine, PromptCache, Service, create_app, running

Requests for different prompts share a batch (each row carries its prompt);
see docs/serving.md.
"""

from spot.serve.app import create_app, running
from spot.serve.batcher import Batcher, QueueFullError
from spot.serve.cache import (CachedPrompt, PromptCache, UnknownPromptError,
                              UnservableMethodError, WrongModelError)
from spot.serve.engine import Decoding, Engine, Shapes, load_engine
from spot.serve.requests import RequestError
from spot.serve.service import Service

__all__ = [
    "Batcher", "CachedPrompt", "Decoding", "Engine", "PromptCache", "QueueFullError",
    "RequestError", "Service", "Shapes", "UnknownPromptError", "UnservableMethodError",
    "WrongModelError", "create_app", "load_engine", "running",
]
