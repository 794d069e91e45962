"""Export a trained model as a bundle: ONE ONNX graph from raw frames to decisions.

The graph is :func:`trainer.model.inference_graph.inference_function` (preprocessing + CNN +
softmax),
converted with ``tf2onnx.convert.from_function`` (``from_keras`` fails on Keras 3), then
checked with ``onnx.checker`` and a real onnxruntime run. The bundle is assembled in a
temporary directory beside the target and renamed into place; an existing bundle is never
overwritten unless ``force=True``.

Bundle files: ``model.onnx``, ``manifest.json`` (:func:`hitstream.bundle.write_manifest`),
``model.keras`` (for fine-tuning), ``evaluation.json`` and ``confusion.png`` (when metrics
are given), ``templates.h5`` (when a template bank is given: the graph then also outputs
the template distance, index and angle) and any ``extra_files``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from hitstream import frame_kernel as ref
from hitstream.bundle import (
    BACKGROUND_INPUT,
    CONFUSION_FILE,
    EVALUATION_FILE,
    INPUT_NAME,
    KERAS_FILE,
    MODEL_FILE,
    TEMPLATES_FILE,
    load_bundle,
    sha256_file,
    write_manifest,
)
from hitstream.errors import BundleError
from hitstream.geometry import DetectorGeometry

log = logging.getLogger(__name__)

OPSET = 17
DEFAULT_HIT_CLASSES = ("single", "multiple", "other")
DEFAULT_KEEP_CLASSES = ("single",)


def software_versions() -> dict[str, str]:
    """Versions of the packages that shape the exported graph."""
    out = {}
    for pkg in ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy", "hitstream"):
        try:
            out[pkg] = metadata.version(pkg if pkg != "tensorflow" else "tensorflow-cpu")
        except metadata.PackageNotFoundError:
            try:
                out[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                out[pkg] = "unknown"
    return out


def preprocessing_summary(
    coarsen: int = 1, details: bool = False, background: bool = False, shot_scale: bool = False
) -> dict[str, Any]:
    """The preprocessing constants baked into the graph (documentation)."""
    channels = list(ref.CHANNELS) + (list(ref.DETAIL_CHANNELS) if details else [])
    return {
        "steps": "2x2 sum binning; minus noise_floor, clip [0, pixel_max]; NaN->0; binned mask; "
        + (f"{coarsen}x{coarsen} sum of the bins; " if coarsen > 1 else "")
        + "hot-pixel cap "
        "hot_abs + hot_rel*mean(8 neighbours); channels sqrt(b)/level_scale and "
        "sqrt(b/(mean(b)+shape_eps))"
        + (
            "; detail channels: Haar details D of each raw 2x2 block (rows, columns, diagonal) "
            "times b/(max(S,1)*sqrt(b+1)), S the raw block sum, non-finite -> 0"
            if details
            else ""
        )
        + (
            "; with the run's map m: lam = 2x2 sums of m (masked, hot-capped), beta = "
            "lam - noise_floor*(1-exp(-lam)); the two level/shape channels made of "
            "d = b - beta instead of b (level sign(d)sqrt|d|, shape of max(d, 0)); channel "
            "sqrt(lam)/level_scale"
            if background
            else ""
        )
        + (
            "; d = b - s*beta with each shot's scale s = (sum min(b, beta + 3 sqrt(beta) + 2) "
            "+ shot_prior) / (sum beta + shot_prior), clipped to shot_range"
            if background and shot_scale
            else ""
        ),
        "bin": ref.BIN,
        "coarsen": coarsen,
        "pixel_max": ref.PIXEL_MAX,
        "noise_floor": ref.NOISE_FLOOR,
        "hot_abs": ref.HOT_ABS,
        "hot_rel": ref.HOT_REL,
        "level_scale": ref.LEVEL_SCALE,
        "shape_eps": ref.SHAPE_EPS,
        "channels": channels + (list(ref.BACKGROUND_CHANNELS) if background else []),
        **(
            {"shot_scale": True, "shot_prior": ref.SHOT_PRIOR, "shot_range": list(ref.SHOT_RANGE)}
            if background and shot_scale
            else {}
        ),
    }


def background_manifest(
    geometry: DetectorGeometry, training_range: tuple[float, float] | None
) -> dict[str, Any]:
    """The manifest's ``background`` key: the graph's second input (the run's background)."""
    out: dict[str, Any] = {
        "input": BACKGROUND_INPUT,
        "shape": [None, *geometry.shape],
        "dtype": "float32",
        "unit": "photons per pixel",
        "description": "the run's background: expected photons per pixel of an empty frame "
        "(hitstream.background), one map for the batch (1, H, W) or one per frame",
    }
    if training_range is not None:
        out["training_range"] = {"level": [float(training_range[0]), float(training_range[1])]}
    return out


def convert_to_onnx(fn: Any, path: Path, opset: int = OPSET) -> None:
    """tf2onnx conversion of a ``tf.function`` with one input signature; outputs keep the
    keys of the dict it returns."""
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    tf2onnx.convert.from_function(
        fn, input_signature=fn.input_signature, opset=opset, output_path=os.fspath(path)
    )


def check_onnx(
    path: Path, frame_shape: tuple[int, int], n_classes: int, background: bool = False
) -> dict[str, Any]:
    """onnx.checker plus one onnxruntime run on two empty frames (with one zero background
    map when the graph takes it, broadcast); returns names and shapes."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(os.fspath(path))
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    want = [INPUT_NAME, BACKGROUND_INPUT] if background else [INPUT_NAME]
    if [i.name for i in inputs] != want:
        raise BundleError(f"{path}: graph inputs {[i.name for i in inputs]}, want {want}")
    feed = {INPUT_NAME: np.zeros((2, *frame_shape), np.float32)}
    if background:
        feed[BACKGROUND_INPUT] = np.zeros((1, *frame_shape), np.float32)
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
    prob = out.get("probabilities")
    if (
        prob is None
        or prob.shape != (2, n_classes)
        or not np.allclose(prob.sum(axis=1), 1, atol=1e-4)
    ):
        raise BundleError(f"{path}: 'probabilities' output missing or malformed")
    return {
        "inputs": {i.name: list(i.shape) for i in inputs},
        "outputs": {o.name: list(o.shape) for o in session.get_outputs()},
    }


def write_confusion_png(path: Path, metrics: Mapping[str, Any], classes: Sequence[str]) -> None:
    """One confusion matrix per evaluated set (rows truth, columns prediction, row-normalised
    colours, counts written in)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [(k, v) for k, v in metrics.items() if isinstance(v, Mapping) and "confusion" in v]
    if not sets:
        return
    fig, axes = plt.subplots(1, len(sets), figsize=(4.8 * len(sets), 4.5), squeeze=False)
    for ax, (title, m) in zip(axes[0], sets, strict=True):
        conf = np.asarray(m["confusion"], float)
        norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    f"{int(conf[i, j])}",
                    ha="center",
                    va="center",
                    color="white" if norm[i, j] > 0.6 else "black",
                    fontsize=9,
                )
        ax.set_xticks(range(len(classes)), classes, rotation=30)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        lines = [f"{title}: accuracy {m.get('accuracy', float('nan')):.3f}"]
        for cls, k in m.get("keep", {}).items():
            lines.append(
                f"{cls} kept (p ≥ {k['threshold']:.2f}): precision {k['precision']:.3f}, "
                f"recall {k['recall']:.3f}"
            )
        ax.set_title("\n".join(lines), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def bank_summary(bank: Any) -> dict[str, Any]:
    """The manifest's ``templates`` entry for a :class:`trainer.templates.bank.TemplateBank`."""
    runs = sorted(set(bank.source_run))
    return {
        "file": TEMPLATES_FILE,
        "mode": bank.mode,
        "n_templates": len(bank),
        "source_runs": runs[:20],
        "polar_config": asdict(bank.polar),
        "attrs": {k: _jsonable(v) for k, v in bank.attrs.items()},
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v if isinstance(v, str | int | float | bool) or v is None else str(v)


def _make_readable(root: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; give the bundle the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def _place(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished bundle into place; with ``force`` swap out an existing one."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if not force:
        raise BundleError(f"{out} already exists; pass force=True (--force) to replace it")
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.rename(out, old / out.name)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def export_bundle(
    model_or_fn: Any,
    out_dir: str | os.PathLike[str],
    *,
    name: str,
    version: str | None = None,
    classes: Sequence[str],
    hit_classes: Sequence[str] = DEFAULT_HIT_CLASSES,
    keep_classes: Sequence[str] = DEFAULT_KEEP_CLASSES,
    thresholds: Mapping[str, float] | None = None,
    training_summary: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
    force: bool = False,
    geometry: DetectorGeometry | None = None,
    opset: int = OPSET,
    output_descriptions: Mapping[str, Mapping[str, Any]] | None = None,
    keras_model: Any = None,
    bank: str | os.PathLike[str] | None = None,
    background_range: tuple[float, float] | None = None,
    novelty: Mapping[str, Any] | None = None,
) -> Path:
    """Write a bundle for a Keras model (logits on preprocessed images) or for a ready
    ``tf.function`` (raw frames → dict with ``probabilities``) and return its path.

    ``version`` defaults to ``YYYYMMDD-<first 8 hex of the ONNX sha256>``, so it changes
    whenever the weights do. ``metrics`` maps set names (e.g. ``validation``, ``test``) to
    :func:`trainer.model.train.classification_metrics` results; ``extra_files`` maps relative
    names to bytes or to files to copy. Every graph output must be described in the
    manifest: :data:`trainer.model.inference_graph.OUTPUTS` covers ``probabilities`` and
    ``photons``;
    ``output_descriptions`` adds others (``{name: {shape, dtype, description}}``, ``"C"``
    in a shape stands for the number of classes), e.g. for a ``tf.function`` that also
    computes a template distance; pass its CNN as ``keras_model`` to keep ``model.keras``.

    ``bank``: a polar template bank file (:func:`trainer.templates.bank.save_bank`). With a Keras
    model the graph then also outputs :data:`trainer.templates.graph.OUTPUTS` (sharing the
    CNN's binning); the file is copied into the bundle as ``templates.h5`` and summarised
    under the manifest's ``templates`` key.
    """
    import keras

    from trainer.model import inference_graph
    from trainer.model.cnn import count_macs
    from trainer.model.inputs import model_layout

    geometry = geometry or DetectorGeometry()
    out = Path(out_dir)
    classes = list(classes)
    for key, subset in (
        ("hit_classes", hit_classes),
        ("keep_classes", keep_classes),
        ("thresholds", list(thresholds or {})),
    ):
        unknown = set(subset) - set(classes)
        if unknown:
            raise BundleError(f"{key} names unknown classes {sorted(unknown)}")
    if out.exists() and not force:
        raise BundleError(f"{out} already exists; pass force=True (--force) to replace it")
    template_bank = None
    descriptions = dict(output_descriptions or {})
    if bank is not None:
        from trainer.templates.bank import load_bank
        from trainer.templates.graph import OUTPUTS as TEMPLATE_OUTPUTS

        template_bank = load_bank(bank)
        descriptions = {**TEMPLATE_OUTPUTS, **descriptions}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        is_keras = isinstance(model_or_fn, keras.Model)
        fn = (
            inference_graph.inference_function(model_or_fn, geometry, template_bank)
            if is_keras
            else model_or_fn
        )
        cnn = model_or_fn if is_keras else keras_model
        layout = model_layout(cnn, geometry) if cnn is not None else None
        takes_bg = layout is not None and layout.background
        convert_to_onnx(fn, tmp / MODEL_FILE, opset)
        io = check_onnx(tmp / MODEL_FILE, tuple(geometry.shape), len(classes), takes_bg)
        model_info: dict[str, Any] = {"opset": opset}
        if cnn is not None:
            model_info.update(
                architecture=cnn.name,
                params=int(cnn.count_params()),
                macs_per_frame=count_macs(cnn),
            )
            cnn.save(tmp / KERAS_FILE)
        if metrics:
            (tmp / EVALUATION_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
            write_confusion_png(tmp / CONFUSION_FILE, metrics, classes)
        for rel, content in (extra_files or {}).items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                dest.write_bytes(content)
            else:
                shutil.copyfile(content, dest)
        templates_info: dict[str, Any] | None = None
        if template_bank is not None and bank is not None:
            shutil.copyfile(bank, tmp / TEMPLATES_FILE)
            templates_info = bank_summary(template_bank)
        created = datetime.now(UTC)
        if version is None:
            version = f"{created:%Y%m%d}-{sha256_file(tmp / MODEL_FILE)[:8]}"
        described = {**inference_graph.OUTPUTS, **inference_graph.BACKGROUND_OUTPUTS}
        described.update(descriptions)
        undescribed = sorted(set(io["outputs"]) - set(described))
        if undescribed:
            raise BundleError(f"graph outputs {undescribed} have no description for the manifest")
        outputs = {}
        for oname in io["outputs"]:
            spec = described[oname]
            shape = [len(classes) if s == "C" else s for s in spec["shape"]]
            outputs[oname] = {**spec, "shape": shape}
        manifest = {
            "format_version": 1,
            "name": name,
            "version": version,
            "created": created.isoformat(timespec="seconds"),
            "classes": classes,
            "hit_classes": list(hit_classes),
            "keep_classes": list(keep_classes),
            "thresholds": {k: float(v) for k, v in (thresholds or {}).items()},
            "input": {"name": INPUT_NAME, "shape": [None, *geometry.shape], "dtype": "float32"},
            "outputs": outputs,
            "model": model_info,
            "preprocessing": preprocessing_summary(
                layout.coarsen if layout else 1,
                layout.details if layout else False,
                takes_bg,
                bool(layout and layout.shot_scale),
            ),
            "geometry": geometry.as_attrs(),
            "training": dict(training_summary or {}),
            "metrics": dict(metrics or {}),
            "software": software_versions(),
        }
        if templates_info is not None:
            manifest["templates"] = templates_info
        if takes_bg:
            manifest["background"] = background_manifest(geometry, background_range)
        if novelty:  # hitstream.novelty's reference
            manifest["novelty"] = dict(novelty)
            if takes_bg and background_range and "background_level" not in novelty:
                manifest["novelty"]["background_level"] = [float(v) for v in background_range]
        write_manifest(tmp, manifest)
        load_bundle(tmp, verify=True)
        _make_readable(tmp)
        _place(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s (%s:%s)", out, name, version)
    return out
