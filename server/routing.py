"""The three API areas (`/api/v1`, `/_worker`, `/_public`) as routes of the one router.

An area used to be a sub-application with its own middlewares; every request then paid
for the prefix lookup, a second router, two more middleware layers and the lookups of the
application's state through the chain of both applications. Here an area's routes sit on
the root router, each handler wrapped in the area's check (the client's or the worker's
token), and a request that no route matches gets that check too before its 404 or 405
(see `unmatched` in server/errors.py), as it did under the sub-application.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from server.errors import AREAS, Handler, Unmatched

Wrap = Callable[[Handler], Handler]


class Area:
    """Adds routes under `prefix` to `app`'s router, each handler wrapped by `wrap`."""

    def __init__(
        self,
        app: web.Application,
        prefix: str,
        wrap: Wrap | None = None,
        unmatched: Unmatched | None = None,
    ) -> None:
        self.router = app.router
        self.prefix = prefix
        self.wrap = wrap
        if unmatched is not None:
            app.setdefault(AREAS, {})[prefix] = unmatched

    def _handler(self, handler: Handler) -> Handler:
        return handler if self.wrap is None else self.wrap(handler)

    def get(self, path: str, handler: Handler) -> web.AbstractResource:
        """GET (and HEAD) `prefix + path`."""
        return _resource(self.router.add_get(self.prefix + path, self._handler(handler)))

    def add(self, method: str, path: str, handler: Handler) -> web.AbstractResource:
        return _resource(self.router.add_route(method, self.prefix + path, self._handler(handler)))

    def post(self, path: str, handler: Handler) -> web.AbstractResource:
        return self.add("POST", path, handler)


def _resource(route: web.AbstractRoute) -> web.AbstractResource:
    assert route.resource is not None  # a route the router made has its resource
    return route.resource
