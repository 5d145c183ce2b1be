"""Helpers for the serving-lab notebooks.

- :func:`start_backend` starts (or reuses) a local model with an OpenAI-compatible base URL;
- :func:`serve_in_background` runs a FastAPI app from a notebook on a free loopback port;
- :func:`get_settings` reads the ``LAB_*`` settings once.
"""

from lab_support.asgi import serve_in_background
from lab_support.backend import Backend, start_backend
from lab_support.settings import get_settings

__all__ = ["Backend", "get_settings", "serve_in_background", "start_backend"]
__version__ = "0.1.0"
