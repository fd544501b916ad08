"""The pages a person opens in a browser: the chat playground (``/playground``, ``/`` redirects to it)
and the API docs (``/docs``: Swagger UI rendering ``/schema``).

Plain files, no build step and nothing fetched from outside the gateway (each page's
Content-Security-Policy says so to the browser): the playground is the HTML, CSS and JavaScript under
``static/playground``; the docs page is ``static/docs`` with Swagger UI's own dist files, shipped by the
``swagger-ui-py`` package. The pages are open like ``/health``; the API calls they make carry the key
typed into the page, checked by :class:`gateway.api.front.FrontDoor` as any other client's.
"""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

from litestar import Router, get
from litestar.datastructures import CacheControlHeader
from litestar.handlers import HTTPRouteHandler
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from gateway.protocol import paths

_STATIC = Path(__file__).parent / "static"
SWAGGER_UI = paths.DOCS + "/swagger-ui"
"""Where Swagger UI's dist files are served (``swagger-ui-bundle.js``, ``swagger-ui.css``)."""
# Revalidated on every load (a new gateway version shows at once); Swagger UI's files change only
# with the package, cached for a day.
_REVALIDATE = CacheControlHeader(no_cache=True)
_DAY = CacheControlHeader(max_age=86400)


def swagger_ui_dir() -> Path | None:
    """Swagger UI's dist folder, as installed by the ``swagger-ui-py`` package (None without it)."""
    if importlib.util.find_spec("swagger_ui") is None:
        return None
    return Path(str(resources.files("swagger_ui") / "static"))


@get("/", include_in_schema=False, sync_to_thread=False)
def _home() -> Redirect:
    """The gateway's root opens the playground."""
    return Redirect(path=paths.PLAYGROUND)


def page_routes() -> list[Router | HTTPRouteHandler]:
    """The route handlers of the playground and docs pages, for :func:`gateway.app.create_app`."""
    routes: list[Router | HTTPRouteHandler] = [
        _home,
        create_static_files_router(
            paths.PLAYGROUND,
            [_STATIC / "playground"],
            html_mode=True,
            name="playground",
            cache_control=_REVALIDATE,
        ),
        create_static_files_router(
            paths.DOCS, [_STATIC / "docs"], html_mode=True, name="docs", cache_control=_REVALIDATE
        ),
    ]
    swagger_ui = swagger_ui_dir()
    # Without the package /docs says so and links the document: the gateway itself still starts.
    if swagger_ui is not None:
        routes.append(
            create_static_files_router(SWAGGER_UI, [swagger_ui], name="swagger-ui", cache_control=_DAY)
        )
    return routes
