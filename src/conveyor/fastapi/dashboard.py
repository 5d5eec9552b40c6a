"""The HTML dashboard served at ``/ui`` by ``queue.router(dashboard=True)``.

One self-contained page (``static/dashboard.html``: no CDN, no build step) that talks to the
router's own JSON and SSE endpoints, relative to its URL, so it works under any prefix and behind
the router's ``dependencies``. Every value that comes from a job is put in the page as text
(``textContent``), never as markup, and a nonce-based Content-Security-Policy runs only the
page's own script.
"""

from __future__ import annotations

import functools
import html
import secrets
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.queue import Queue

__all__ = ["render_dashboard"]


@functools.cache
def _template() -> str:
    return resources.files("conveyor.fastapi").joinpath("static/dashboard.html").read_text("utf-8")


def render_dashboard(queue: Queue) -> tuple[str, str]:
    """The dashboard page for ``queue``, and the CSP nonce its inline script and style carry."""
    nonce = secrets.token_urlsafe(16)
    page = (
        _template()
        .replace("{{NONCE}}", nonce)
        .replace("{{QUEUE}}", html.escape(queue.name, quote=True))
        # the engine only: paths and hosts of the store stay off the page
        .replace("{{BACKEND}}", html.escape(queue.backend.url.split(":", 1)[0], quote=True))
    )
    return page, nonce
