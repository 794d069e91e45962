"""The one-way rule of imports and the architecture page (docs/architecture.md).

Layers, lowest first; a module may import only from its own layer or lower ones:

    hitstream (core)  <  streamer  <  trainer.data < trainer.templates < trainer.model
                                       < trainer.labelling < trainer.commands (+ trainer.cli)

- ``streamer`` never imports ``trainer`` nor TensorFlow; ``hitstream`` imports neither
  ``streamer`` nor ``trainer`` nor TensorFlow.
- A command imports no other command (only ``trainer.commands.args``).
- No import cycles between modules (imports inside functions count too).
- Tests and benches do not import each other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hitstream", "streamer", "trainer")
LAYERS = (
    "hitstream",
    "streamer",
    "trainer.data",
    "trainer.templates",
    "trainer.model",
    "trainer.labelling",
    "trainer.commands",
)
HEAVY = ("tensorflow", "keras", "tf2onnx", "onnx")  # the training stack


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            out[module_name(p)] = p
    return out


MODULES = modules()


def imports_of(path: Path) -> set[str]:
    """Every absolute module name imported anywhere in the file (``from a import b``
    counts as ``a.b`` when ``a.b`` is a module, else ``a``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(
                f"{node.module}.{a.name}"
                for a in node.names
                if f"{node.module}.{a.name}" in MODULES
            )
    return found


def layer(name: str) -> int | None:
    """Index of the layer of one of our modules (trainer.cli sits with the commands)."""
    if name in ("trainer", "trainer.cli", "trainer.__main__"):
        return LAYERS.index("trainer.commands")
    best = None
    for i, prefix in enumerate(LAYERS):
        if name == prefix or name.startswith(prefix + "."):
            best = i
    return best


def ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_follow_the_layers(name: str) -> None:
    mine = layer(name)
    assert mine is not None, f"{name} is in no layer; add its package to LAYERS"
    for dep in imports_of(MODULES[name]):
        top = dep.split(".")[0]
        if name.startswith(("hitstream", "streamer")):
            assert top not in HEAVY, f"{name} imports {dep} (serving side: no TensorFlow)"
        if not ours(dep):
            continue
        theirs = layer(dep)
        assert theirs is not None and theirs <= mine, (
            f"{name} (layer {LAYERS[mine]}) imports {dep} (layer "
            f"{LAYERS[theirs] if theirs is not None else '?'}): imports go one way, down"
        )
        if name.startswith("trainer.commands.") and dep.startswith("trainer.commands."):
            assert dep == "trainer.commands.args", f"command {name} imports command {dep}"


def test_no_import_cycles() -> None:
    graph = {
        name: {d for d in imports_of(path) if d in MODULES and d != name}
        for name, path in MODULES.items()
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(u: str, stack: list[str]) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                cycles.append([*stack[stack.index(v) :], v])
            elif v not in state:
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_architecture_page_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:hitstream|streamer|trainer)/[\w/]+\.py)`", text))
    missing = [
        str(p.relative_to(ROOT))
        for p in MODULES.values()
        if p.name not in ("__init__.py", "__main__.py") and str(p.relative_to(ROOT)) not in named
    ]
    assert not missing, f"docs/architecture.md does not describe: {missing}"
    stale = [n for n in named if not (ROOT / n).is_file()]
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"


@pytest.mark.parametrize(("folder", "other"), [("tests", "bench"), ("bench", "tests")])
def test_tests_and_benches_do_not_import_each_other(folder: str, other: str) -> None:
    for p in sorted((ROOT / folder).rglob("*.py")):
        bad = sorted(d for d in imports_of(p) if d.split(".")[0] == other)
        assert not bad, f"{p.relative_to(ROOT)} imports {bad}"
        assert "sys.path.insert" not in p.read_text(encoding="utf-8") or folder == "tests", (
            f"{p.relative_to(ROOT)} changes sys.path: import the installed package"
        )
