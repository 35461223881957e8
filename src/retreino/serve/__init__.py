"""`retreino serve`: a web page and a REST API for a model's predictions.

>>> from retreino.serve import serve
>>> serve("runs/cats", port=8000)   # doctest: +SKIP

FastAPI and uvicorn come with the `serve` extra: `pip install retreino[serve]`.
"""
from .app import ServeSettings, create_app
from .batcher import MicroBatcher
from .server import serve

__all__ = ["MicroBatcher", "ServeSettings", "create_app", "serve"]
