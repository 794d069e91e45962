"""Packaging contracts: entry points exist, the streamer never imports TensorFlow."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_streamer_imports_without_tensorflow() -> None:
    code = (
        "import sys\n"
        "import streamer.cli, streamer.serve, streamer.pipeline, streamer.replay, streamer.demo\n"
        "import streamer.cli as c\n"
        "import importlib\n"
        "[importlib.import_module(m) for m in c.COMMANDS.values()]\n"
        "heavy = ('tensorflow', 'keras', 'tf2onnx')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_console_scripts_and_extras_are_declared() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["scripts"] == {"streamer": "streamer.cli:main", "trainer": "trainer.cli:main"}
    extras = meta["optional-dependencies"]
    assert {"cpu", "gpu", "train", "dev"} <= set(extras)
    serving = " ".join(meta["dependencies"] + extras["cpu"] + extras["gpu"])
    assert "tensorflow" not in serving and "keras" not in serving
    assert any(d.startswith("onnxruntime-gpu") for d in extras["gpu"])
    assert not any(d.startswith("onnxruntime-gpu") for d in extras["cpu"])


def test_python_m_entry_points_answer_help() -> None:
    for pkg in ("streamer", "trainer"):
        out = subprocess.run(
            [sys.executable, "-m", pkg, "--help"], capture_output=True, text=True, cwd=ROOT
        )
        assert out.returncode == 0 and "COMMAND" in out.stdout, out.stderr[-1000:]


def test_one_version_spdx_license_and_what_the_wheel_ships(tmp_path: Path) -> None:
    import zipfile

    import hitstream
    import streamer
    import trainer

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in meta and "version" in meta["dynamic"]  # one version: the code's
    assert streamer.__version__ == trainer.__version__ == hitstream.__version__
    assert meta["license"] == "BSD-3-Clause" and (ROOT / "LICENSE").is_file()
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("hitstream", "streamer", "trainer"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("hitstream-*.whl")
    assert wheel.name.startswith(f"hitstream-{hitstream.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("hitstream-")}
    assert tops == {"hitstream", "streamer", "trainer"}  # no tests/, bench/, models/
    pages = {n for n in names if n.endswith((".html", ".css", ".js"))}
    assert {f"streamer/pages/live.{e}" for e in ("html", "css", "js")} <= pages
    assert {f"trainer/labelling/pages/label.{e}" for e in ("html", "css", "js")} <= pages
    graphs = {n for n in names if n.startswith("streamer/graphs/") and n.endswith(".onnx")}
    assert len(graphs) == 4, graphs  # the detector map on the GPU (streamer.map_graph)
    lic = [n for n in names if n.endswith("LICENSE")]
    assert lic and "BSD 3-Clause" in zipfile.ZipFile(wheel).read(lic[0]).decode()
