"""`sdclip serve`: the inspector as a live web page and a JSON API (starlette on uvicorn).

Torch is imported only when a model is loaded for /api/encode.
"""

from sdclip.serve.app import create_app

__all__ = ["create_app"]
