"""A mkdocs hook: the build fails when a page shows a picture the site does not hold.

mkdocs warns about a Markdown image whose file is missing, but a warning stops a
``--strict`` build only when it is logged, and ``--quiet`` (as in CI) silences it; a
picture in raw HTML (``<img>``, ``<object>``, ``<source>``) it does not check at all. This
hook reads every built page after the build and raises, naming each page and picture,
whatever the log level. Enabled in ``mkdocs.yml`` with ``hooks: [docs/hooks/images.py]``.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mkdocs.exceptions import PluginError

#: The attributes that name a picture, per tag.
_PICTURE_ATTRIBUTES = {"img": ("src",), "object": ("data",), "source": ("src", "srcset")}


class _PictureParser(HTMLParser):
    """Collects the local picture addresses of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.addresses: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = _PICTURE_ATTRIBUTES.get(tag, ())
        for name, value in attrs:
            if name not in names or not value:
                continue
            if name == "srcset":
                self.addresses += [part.split()[0] for part in value.split(",") if part.strip()]
            else:
                self.addresses.append(value)


def _is_local(address: str) -> bool:
    parts = urlsplit(address)
    return not (parts.scheme or parts.netloc or address.startswith("#"))


def missing_pictures(site_dir: Path) -> list[tuple[str, str]]:
    """Every (page, picture) of a built site whose picture file is not in the site.

    Args:
        site_dir: The folder ``mkdocs build`` wrote.

    Returns:
        ``(page, address)`` pairs, the page relative to ``site_dir``, sorted.

    Examples:
        >>> import tempfile
        >>> site = Path(tempfile.mkdtemp())
        >>> _ = (site / "index.html").write_text('<img src="img/a.svg"><img src="b.png">')
        >>> _ = (site / "img").mkdir(), (site / "img" / "a.svg").write_text("<svg/>")
        >>> missing_pictures(site)
        [('index.html', 'b.png')]
    """
    missing = []
    for page in sorted(site_dir.rglob("*.html")):
        parser = _PictureParser()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        for address in parser.addresses:
            if not _is_local(address):
                continue
            path = unquote(urlsplit(address).path)
            target = site_dir / path.lstrip("/") if path.startswith("/") else page.parent / path
            if not target.resolve().is_file():
                missing.append((page.relative_to(site_dir).as_posix(), address))
    return missing


def on_post_build(config: Any, **_: Any) -> None:
    """Raise if a built page shows a picture that the site does not hold.

    Raises:
        PluginError: naming every page and picture address that has no file.
    """
    missing = missing_pictures(Path(config["site_dir"]))
    if missing:
        lines = "\n".join(f"  {page}: {address}" for page, address in missing)
        msg = f"pictures referenced but missing from the built site:\n{lines}"
        raise PluginError(msg)
