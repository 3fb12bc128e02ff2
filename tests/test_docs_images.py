"""The docs' picture check (docs/hooks/images.py) and the committed figures."""

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest
from mkdocs.commands.build import build
from mkdocs.config import load_config
from mkdocs.exceptions import Abort, PluginError

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "docs" / "hooks" / "images.py"


def _hook():
    spec = importlib.util.spec_from_file_location("docs_hook_images", HOOK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _site(tmp_path: Path, html: str, files: tuple[str, ...] = ()) -> Path:
    site = tmp_path / "site"
    (site / "page").mkdir(parents=True)
    (site / "page" / "index.html").write_text(html, encoding="utf-8")
    for name in files:
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(b"<svg/>")
    return site


def test_missing_pictures_names_page_and_address(tmp_path):
    html = """<img src="../img/a.svg"><img src="../img/gone.png" alt="x">
    <object data="../img/b.svg"></object><source srcset="../img/c.png 1x, ../img/d.png 2x">
    <img src="https://example.org/x.png"><img src="data:image/png;base64,AA==">
    <img src="/img/a.svg"><img src="/img/lost.svg">"""
    site = _site(tmp_path, html, ("img/a.svg", "img/c.png"))
    assert _hook().missing_pictures(site) == [
        ("page/index.html", "../img/gone.png"),
        ("page/index.html", "../img/b.svg"),
        ("page/index.html", "../img/d.png"),
        ("page/index.html", "/img/lost.svg"),
    ]


def test_post_build_raises_on_a_missing_picture(tmp_path):
    hook = _hook()
    site = _site(tmp_path, '<p><img src="../figure.svg"></p>')
    with pytest.raises(PluginError, match=r"page/index\.html: \.\./figure\.svg"):
        hook.on_post_build({"site_dir": str(site)})
    (site / "figure.svg").write_text("<svg/>", encoding="utf-8")
    hook.on_post_build({"site_dir": str(site)})


@pytest.mark.parametrize("present", [True, False])
def test_mkdocs_build_fails_on_a_missing_picture(tmp_path, caplog, present):
    docs = tmp_path / "docs"
    (docs / "img").mkdir(parents=True)
    (docs / "index.md").write_text("# Home\n\n![a figure](img/figure.svg)\n", encoding="utf-8")
    if present:
        (docs / "img" / "figure.svg").write_text("<svg/>", encoding="utf-8")
    config_file = tmp_path / "mkdocs.yml"
    config_file.write_text(
        textwrap.dedent(f"""\
            site_name: t
            docs_dir: {docs}
            site_dir: {tmp_path / "site"}
            hooks: [{HOOK}]
            """),
        encoding="utf-8",
    )
    config = load_config(str(config_file))
    if present:
        build(config)
        assert (tmp_path / "site" / "img" / "figure.svg").is_file()
    else:
        with pytest.raises(Abort, match="BuildError"):
            build(config)
        assert "index.html: img/figure.svg" in caplog.text


def test_committed_figures_are_small_and_their_data_names_its_source():
    figures = sorted((ROOT / "docs" / "img").glob("*.svg"))
    assert len(figures) >= 8
    for figure in figures:
        assert figure.stat().st_size < 150 * 1024, figure.name
        assert b"<dc:date>" not in figure.read_bytes(), figure.name
    for data in sorted((ROOT / "docs" / "img" / "data").glob("*.json")):
        assert "source" in json.loads(data.read_text(encoding="utf-8")), data.name
