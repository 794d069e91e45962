"""Model bundles: ``models/<name>/`` with ``model.onnx``, ``manifest.json`` and companions.

The manifest is the contract between trainer and streamer. This module reads, checks and
writes it; it never imports onnxruntime or TensorFlow.

Manifest (format_version 1) keys::

    format_version  int, 1
    name, version   str; version changes whenever the weights change
    created         ISO 8601 UTC
    classes         ordered class names; output column i of ``probabilities`` is classes[i]
    hit_classes     classes that count as hits (hit rate)
    keep_classes    classes whose frames are written to the kept data
    thresholds      {class: min probability to keep}; missing class -> argmax only
    input           {"name", "shape": [null, H, W], "dtype"}
    background      optional, present iff the graph takes the run's background as a second
                    input: {"input": name, "shape": [null, H, W] (the frame shape), "dtype":
                    "float32", "unit": "photons per pixel", "description", "training_range":
                    {"level": [lo, hi]}}. The graph gets (B or 1, H, W) float32: the expected
                    photons per pixel of an empty frame of the run (hitstream.background),
                    in the same units as the frames after ``engine.photon_unit``
    outputs         {name: {"shape": [...], "dtype", "description"}}
    geometry        detector geometry of the input frames (:class:`DetectorGeometry` fields)
    preprocessing   the preprocessing constants baked into the graph (documentation)
    training        free-form summary of the training data
    metrics         validation metrics
    software        package versions used to build the bundle
    files           {relative path: sha256 hex} of every file of the bundle but the manifest
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hitstream.errors import BundleError, InputDataError
from hitstream.geometry import DetectorGeometry, geometry_from_attrs

FORMAT_VERSION = 1
# every file a bundle may hold (the manifest lists the ones present, with their sha256)
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"  # ONE graph from raw frames to decisions (required)
INPUT_NAME = "frames"  # the graph's frame input: (batch, H, W) float32 photons
BACKGROUND_KEY = "background"  # manifest key of the optional run-background input
BACKGROUND_INPUT = "background"  # its usual input name: (batch or 1, H, W) float32 photons
KERAS_FILE = "model.keras"  # the CNN's weights, for fine-tuning
TEMPLATES_FILE = "templates.h5"  # the polar template bank the graph matches against
EVALUATION_FILE = "evaluation.json"  # classification metrics on the test frames
CONFUSION_FILE = "confusion.png"  # the confusion matrix as a picture
TRAINING_FILE = "training.png"  # loss and accuracy per epoch
FINETUNE_FILE = "finetune.json"  # before/after metrics of ``trainer finetune``
REQUIRED_KEYS = ("format_version", "name", "version", "classes", "input", "outputs", "files")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def hit_classes(self) -> tuple[str, ...]:
        return tuple(self.manifest.get("hit_classes", ()))

    @property
    def keep_classes(self) -> tuple[str, ...]:
        return tuple(self.manifest.get("keep_classes", ()))

    @property
    def thresholds(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in self.manifest.get("thresholds", {}).items()}

    @property
    def input_name(self) -> str:
        return str(self.manifest["input"]["name"])

    @property
    def frame_shape(self) -> tuple[int, int]:
        shape = self.manifest["input"]["shape"]
        return int(shape[-2]), int(shape[-1])

    @property
    def background_input(self) -> str | None:
        """Name of the graph input that takes the run's background, None when it takes none."""
        bg = self.manifest.get(BACKGROUND_KEY)
        return str(bg["input"]) if isinstance(bg, dict) else None

    @property
    def background_range(self) -> tuple[float, float] | None:
        """Background levels (mean photons per valid pixel) the model was trained on."""
        bg = self.manifest.get(BACKGROUND_KEY)
        tr = bg.get("training_range") if isinstance(bg, dict) else None
        level = tr.get("level") if isinstance(tr, dict) else None
        return (float(level[0]), float(level[1])) if level is not None else None

    def feed(
        self, frames: np.ndarray, background: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """The graph's inputs for an onnxruntime session run on ``frames`` ``(B, H, W)``:
        with the run's ``background`` ``(H, W)`` when the graph takes one (None: a dark
        run, zeros). A background given to a graph that takes none is ignored.

        >>> session.run(None, bundle.feed(frames))   # doctest: +SKIP
        """
        feed = {self.input_name: np.ascontiguousarray(frames, np.float32)}
        if self.background_input is not None:
            b = np.zeros(self.frame_shape, np.float32) if background is None else background
            feed[self.background_input] = np.asarray(b, np.float32).reshape(1, *self.frame_shape)
        return feed

    @property
    def geometry(self) -> DetectorGeometry:
        """The detector geometry of the input frames (the default one of the frame shape when
        the manifest has none; checked by :func:`load_bundle`)."""
        return geometry_from_attrs(
            self.manifest.get("geometry"), shape=self.frame_shape, where=str(self.path / MANIFEST)
        )

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def label(self) -> str:
        """``name:version``, as written beside every frame."""
        return f"{self.name}:{self.version}"


def load_bundle(path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
    """Read and check a bundle; raise :class:`BundleError` naming what is wrong."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"model bundle {root} does not exist or is not a directory")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"model bundle {root} has no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath} must hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{mpath} lacks required keys: {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"{mpath} has format_version {manifest['format_version']!r}; "
            f"this hitstream reads {FORMAT_VERSION}"
        )
    classes = manifest["classes"]
    if not isinstance(classes, list) or not classes or len(set(classes)) != len(classes):
        raise BundleError(f"{mpath}: 'classes' must be a non-empty list of unique names")
    for key in ("hit_classes", "keep_classes"):
        unknown = set(manifest.get(key, [])) - set(classes)
        if unknown:
            raise BundleError(f"{mpath}: {key} names unknown classes {sorted(unknown)}")
    bundle = Bundle(path=root, manifest=manifest)
    try:
        bundle.geometry  # noqa: B018 - parsed once here so that later reads cannot fail
    except (InputDataError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise BundleError(f"{mpath}: unusable 'input' or 'geometry': {exc}") from exc
    _check_background(bundle, mpath)
    files = manifest["files"]
    if MODEL_FILE not in files:
        raise BundleError(f"{mpath}: 'files' does not list {MODEL_FILE}")
    if verify:
        for rel, digest in files.items():
            fpath = (root / rel).resolve()
            if root.resolve() not in fpath.parents:
                raise BundleError(f"{mpath}: file entry {rel!r} points outside the bundle")
            if not fpath.is_file():
                raise BundleError(f"model bundle {root} is missing {rel}")
            actual = sha256_file(fpath)
            if actual != digest:
                raise BundleError(
                    f"{fpath} is corrupted: sha256 {actual[:12]}… differs from the manifest's "
                    f"{str(digest)[:12]}…"
                )
    return bundle


def _check_background(bundle: Bundle, mpath: Path) -> None:
    """The optional ``background`` key: an input name, the frame shape, float32, a range."""
    bg = bundle.manifest.get(BACKGROUND_KEY)
    if bg is None:
        return
    where = f"{mpath}: '{BACKGROUND_KEY}'"
    if not isinstance(bg, dict):
        raise BundleError(f"{where} must be an object with 'input' and 'shape'")
    name = bg.get("input")
    if not isinstance(name, str) or not name:
        raise BundleError(f"{where} needs 'input', the name of the graph input")
    if name == bundle.manifest["input"].get("name"):
        raise BundleError(f"{where}: input {name!r} is the frames' input")
    h, w = bundle.frame_shape
    if bg.get("shape") != [None, h, w]:
        raise BundleError(
            f"{where}: shape {bg.get('shape')!r} is not [null, {h}, {w}] (the frame shape)"
        )
    if bg.get("dtype", "float32") != "float32":
        raise BundleError(f"{where}: dtype {bg.get('dtype')!r}, expected 'float32'")
    if "training_range" not in bg:
        return
    tr = bg["training_range"]
    level = tr.get("level") if isinstance(tr, dict) else None
    if not (
        isinstance(level, list)
        and len(level) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in level)
        and math.isfinite(level[0])
        and math.isfinite(level[1])
        and level[0] <= level[1]
    ):
        raise BundleError(f"{where}: training_range.level must be [lo, hi], got {level!r}")


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Fill ``files`` with the sha256 of every file under ``root`` and write the manifest.

    The manifest is written atomically (temporary file, then rename).
    """
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.startswith("."):
            files[p.relative_to(root).as_posix()] = sha256_file(p)
    out = dict(manifest)
    out.setdefault("format_version", FORMAT_VERSION)
    out.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
    out["files"] = files
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".manifest.", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2, sort_keys=False)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; bundles are read by other users
    os.replace(tmp, root / MANIFEST)
    return out
