"""The HTTP face (docs/design.md §6): ``sluicegate serve``, an ASGI app on hypercorn's trio worker
that
the official OpenAI SDKs talk to unchanged."""

from __future__ import annotations

from ._app import ProxyApp as ProxyApp
from ._serve import DEFAULT_PORT as DEFAULT_PORT
from ._serve import build_app as build_app
from ._serve import serve as serve

__all__ = ["DEFAULT_PORT", "ProxyApp", "build_app", "serve"]
