"""The proxy's routes, as one table: a method and a path template to a handler.

A template's ``{name}`` stands for one path segment, handed to the handler in order; a template
with one matches with a trailing slash too. Paths without one are found with a dict lookup (most
requests), the few templates are tried in order. A path that no route has and a method that its
routes do not take are answered alike (the caller's 404).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Generic, Literal, TypeAlias, TypeVar

import attrs

__all__ = ["ANY_METHOD", "Access", "Route", "RouteTable"]

H = TypeVar("H")

#: The method of a route that takes every method.
ANY_METHOD = "*"

#: Who may call a route: ``"key"``, an authenticated caller; ``"open"``, anyone while the
#: gateway serves; ``"always"``, anyone, even while the gateway starts or stops.
Access: TypeAlias = Literal["key", "open", "always"]

_PARAMETER = re.compile(r"\{[a-z_]+\}")


@attrs.frozen
class Route(Generic[H]):
    method: str
    #: Its path templates; the first is its label in the metrics.
    paths: tuple[str, ...]
    handler: H
    access: Access = "key"

    @property
    def label(self) -> str:
        return self.paths[0]


@attrs.define(eq=False, init=False)
class RouteTable(Generic[H]):
    """The routes of an application, found by method and path."""

    #: path -> method -> route, for the paths without parameters.
    _static: dict[str, dict[str, Route[H]]]
    #: (template as a pattern, method -> route), in the order the routes were given.
    _templates: list[tuple[re.Pattern[str], dict[str, Route[H]]]]

    def __init__(self, routes: Iterable[Route[H]]) -> None:
        static: dict[str, dict[str, Route[H]]] = {}
        templates: dict[str, dict[str, Route[H]]] = {}
        for route in routes:
            for path in route.paths:
                table = templates if _PARAMETER.search(path) else static
                methods = table.setdefault(path, {})
                assert route.method not in methods, f"two routes for {route.method} {path}"
                methods[route.method] = route
        self.__attrs_init__(
            static, [(_pattern(path), methods) for path, methods in templates.items()]
        )

    def find(self, method: str, path: str) -> tuple[Route[H], tuple[str, ...]] | None:
        """The route of a request and the path's parameters; None if there is none."""
        methods = self._static.get(path)
        parameters: tuple[str, ...] = ()
        if methods is None:
            for pattern, candidates in self._templates:
                match = pattern.fullmatch(path)
                if match is not None:
                    methods, parameters = candidates, match.groups()
                    break
            else:
                return None
        route = methods.get(method) or methods.get(ANY_METHOD)
        return None if route is None else (route, parameters)


def _pattern(template: str) -> re.Pattern[str]:
    """A template as a pattern: each parameter one segment, and an optional trailing slash."""
    literals = _PARAMETER.split(template)
    return re.compile("([^/]+)".join(map(re.escape, literals)) + "/?")
