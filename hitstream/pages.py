"""Web pages as package data: plain HTML, CSS and JavaScript files beside the code serving them.

A page is a few files in a ``pages`` folder of its package (``streamer/pages/live.html``,
``live.css``, ``live.js``; ``trainer/labelling/pages/label.*``), shipped as package data
(pyproject: ``*.html``, ``*.css``, ``*.js``) and read once with :mod:`importlib.resources`
when the server that serves them is made; they are served as they are, no templating. The
HTML names its stylesheet and script by the URLs the server gives them. ``tests/test_pages.py``
checks every file (well-formed HTML, ``node --check``, balanced CSS, the ids the script
looks up) and that the servers answer with exactly these bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from hitstream.errors import ConfigError

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    """One file of a page, ready to serve."""

    name: str
    content_type: str
    body: bytes

    def answer(self) -> tuple[int, str, bytes]:
        """``(200, content type, body)``: a route's answer."""
        return 200, self.content_type, self.body


@cache
def load_asset(package: str, name: str, folder: str = "pages") -> Asset:
    """The file ``folder/name`` of ``package`` (read once; :class:`ConfigError` when the
    installation lacks it)."""
    suffix = "." + name.rpartition(".")[2]
    if suffix not in CONTENT_TYPES:
        raise ConfigError(f"{name}: pages are {', '.join(CONTENT_TYPES)} files")
    try:
        body = resources.files(package).joinpath(folder).joinpath(name).read_bytes()
    except (OSError, ModuleNotFoundError) as exc:
        raise ConfigError(
            f"page file {package}/{folder}/{name} is missing ({exc}); reinstall hitstream"
        ) from exc
    return Asset(name, CONTENT_TYPES[suffix], body)


def load_page(package: str, *names: str, folder: str = "pages") -> dict[str, Asset]:
    """``name -> Asset`` for the files of one page (the HTML first, then its CSS and JS)."""
    return {n: load_asset(package, n, folder) for n in names}
