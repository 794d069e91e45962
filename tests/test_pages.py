"""The web pages' files (package data): well-formed HTML, JavaScript that ``node --check``
accepts, balanced CSS, ids the script looks up that exist, the colours of hitstream.render,
and servers that answer with exactly these files."""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest

from hitstream import render
from hitstream.pages import CONTENT_TYPES, load_page
from hitstream.simulate import simulate_run, write_run
from streamer.http_server import StatusServer
from streamer.live_view import PAGE_FILES as LIVE_FILES
from streamer.live_view import LiveView
from streamer.metrics import Metrics
from trainer.labelling.server import PAGE_FILES as LABEL_FILES
from trainer.labelling.server import LabelServer
from trainer.labelling.session import open_session

ROOT = Path(__file__).resolve().parents[1]
PAGES = {  # page -> (package, its folder in the tree, its files: html, css, js)
    "live": ("streamer", ROOT / "streamer" / "pages", LIVE_FILES),
    "label": ("trainer.labelling", ROOT / "trainer" / "labelling" / "pages", LABEL_FILES),
}
VOID = frozenset(  # elements without an end tag
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}
    | {"track", "wbr"}
)


def text(page: str, suffix: str) -> str:
    package, _, names = PAGES[page]
    name = next(n for n in names if n.endswith(suffix))
    return load_page(package, name)[name].body.decode("utf-8")


class Structure(HTMLParser):
    """Tag balance, ids, and the page's stylesheet and script references."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, tuple[int, int]]] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.styles: list[str] = []
        self.scripts: list[str] = []
        self.doctype = ""
        self.inline_code = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "link" and a.get("rel") == "stylesheet":
            self.styles.append(str(a.get("href")))
        if tag == "script":
            if not a.get("src"):
                self.inline_code = True
            self.scripts.append(str(a.get("src")))
        if tag == "style":
            self.inline_code = True
        if tag not in VOID:
            self.stack.append((tag, self.getpos()))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.errors.append(f"<{tag}/> at {self.getpos()}: not a void element")
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            self.errors.append(f"</{tag}> at {self.getpos()}: void elements have no end tag")
        elif not self.stack or self.stack[-1][0] != tag:
            top = self.stack[-1] if self.stack else ("nothing", None)
            self.errors.append(f"</{tag}> at {self.getpos()} closes <{top[0]}> of {top[1]}")
        else:
            self.stack.pop()


def structure(page: str) -> Structure:
    p = Structure()
    p.feed(text(page, ".html"))
    p.close()
    return p


def js_ids(js: str) -> set[str]:
    """Element ids the script looks up: ``getElementById("x")``, ``querySelector("#x ...")``
    and calls of helpers defined as ``(id) => document.getElementById(id)``."""
    ids = set(re.findall(r"getElementById\(\s*[\"'`]([\w-]+)[\"'`]\s*\)", js))
    ids |= set(re.findall(r"querySelector(?:All)?\(\s*[\"'`]#([\w-]+)", js))
    helpers = re.findall(
        r"(?:const|let|var)\s+([\w$]+)\s*=\s*\((\w+)\)\s*=>\s*document\.getElementById\(\2\)", js
    )
    for name, _ in helpers:
        ids |= set(re.findall(re.escape(name) + r"\(\s*[\"'`]([\w-]+)[\"'`]\s*\)", js))
    return ids


# -- the files -------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_files_are_package_data_loaded_as_they_are(page: str) -> None:
    package, folder, names = PAGES[page]
    assert [n.rpartition(".")[2] for n in names] == ["html", "css", "js"]
    for name, asset in load_page(package, *names).items():
        assert asset.body == (folder / name).read_bytes()  # no templating, no changes
        assert asset.content_type == CONTENT_TYPES["." + name.rpartition(".")[2]]
        assert asset.body.decode("utf-8").endswith("\n")
    assert not list(ROOT.glob(f"{package.replace('.', '/')}/page*.py"))  # no pages in strings


@pytest.mark.parametrize("page", PAGES)
def test_html_is_well_formed(page: str) -> None:
    p = structure(page)
    assert p.doctype.lower() == "doctype html"
    assert not p.errors, p.errors
    assert not p.stack, f"never closed: {p.stack}"
    assert len(p.ids) == len(set(p.ids)), f"duplicate ids: {sorted(p.ids)}"
    assert not p.inline_code, "the page's CSS and JS belong in their own files"
    _, _, names = PAGES[page]
    assert [s.rpartition("/")[2] for s in p.styles] == [names[1]]
    assert [s.rpartition("/")[2] for s in p.scripts] == [names[2]]


@pytest.mark.parametrize("page", PAGES)
def test_javascript_passes_node_check(page: str, tmp_path: Path) -> None:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.fail("node (Node.js) is not installed: it is needed to check the pages' JavaScript")
    path = tmp_path / f"{page}.js"
    path.write_text(text(page, ".js"), encoding="utf-8")
    out = subprocess.run([node, "--check", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    broken = tmp_path / "broken.js"  # the check does catch syntax errors
    broken.write_text(text(page, ".js") + "\nfunction (\n", encoding="utf-8")
    assert subprocess.run([node, "--check", str(broken)], capture_output=True).returncode != 0


@pytest.mark.parametrize("page", PAGES)
def test_css_is_balanced_and_names_the_render_colours(page: str) -> None:
    css = text(page, ".css")
    bare = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    bare = re.sub(r"\"[^\"\n]*\"|'[^'\n]*'", "", bare)
    assert bare.strip(), "empty stylesheet"
    depth = 0
    for ch in bare:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, "a } without its {"
    assert depth == 0, "a { never closed"
    assert bare.count("{") >= 10
    for var, rgb in (("mask", render.MASK_RGB), ("hot", render.HOT_RGB)):
        want = "rgb({}, {}, {})".format(*rgb)
        assert re.search(rf"--{var}:\s*{re.escape(want)}", bare), f"--{var} is not {want}"


@pytest.mark.parametrize("page", PAGES)
def test_every_id_the_script_looks_up_exists(page: str) -> None:
    ids = set(structure(page).ids)
    looked_up = js_ids(text(page, ".js"))
    assert len(looked_up) >= 8, looked_up  # the lookups were found at all
    assert looked_up <= ids, f"not in the HTML: {sorted(looked_up - ids)}"
    assert js_ids("const q = (k) => document.getElementById(k); q(\"a\"); q('b');") == {"a", "b"}


@pytest.mark.parametrize("page", PAGES)
def test_both_pages_name_the_same_colours(page: str) -> None:
    html = re.sub(r"\s+", " ", text(page, ".html"))
    for words in (
        f"log scale ({render.COLOUR_MAP}), row 0 on top",
        '<span class="swatch mask">',
        "invalid pixels (gap, beam-stop hole, NaN)",
        '<span class="swatch hot">',
        "hot pixels the model caps",
    ):
        assert words in html, words


def test_one_palette_magma_mask_and_hot() -> None:
    pal = np.frombuffer(render.palette(), np.uint8).reshape(256, 3)
    assert pal[render.MASK_LEVEL].tolist() == list(render.MASK_RGB)
    assert pal[render.HOT_LEVEL].tolist() == list(render.HOT_RGB)
    magma = pal[: render.LEVELS]
    assert magma[0].tolist() == [0, 0, 4] and magma[-1].tolist() == [252, 253, 191]
    assert not (magma == render.MASK_RGB).all(axis=1).any()
    assert not (magma == render.HOT_RGB).all(axis=1).any()


# -- served as they are ----------------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read()
    finally:
        conn.close()


def check_served(page: str, port: int, page_path: str) -> None:
    """The page and the stylesheet and script it names, byte for byte as the files."""
    _, folder, names = PAGES[page]
    status, ctype, body = get(port, page_path)
    assert (status, ctype) == (200, CONTENT_TYPES[".html"])
    assert body == (folder / names[0]).read_bytes()
    p = structure(page)
    for ref, name in ((p.styles[0], names[1]), (p.scripts[0], names[2])):
        path = urljoin(page_path, ref)
        status, ctype, body = get(port, path)
        assert status == 200, path
        assert ctype == CONTENT_TYPES["." + name.rpartition(".")[2]]
        assert body == (folder / name).read_bytes(), path


def test_streamer_serves_the_live_page_files() -> None:
    server = StatusServer(Metrics(), "127.0.0.1", 0)
    for path, handler in LiveView(Metrics()).routes().items():  # as streamer serve does
        server.route(path, handler)
    with server:
        check_served("live", server.port, "/live")
        check_served("live", server.port, "/")


def test_label_server_serves_the_label_page_files(tmp_path: Path) -> None:
    write_run(tmp_path / "run.h5", simulate_run(4, seed=3), dataset="entry/data")
    session = open_session([tmp_path / "run.h5"], "entry/data", tmp_path / "l.csv", progress=False)
    with LabelServer(session) as server:
        check_served("label", server.port, "/")
        assert get(server.port, "/index.html")[2] == get(server.port, "/")[2]
