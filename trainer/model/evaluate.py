"""Evaluation of a model bundle's ONNX graph on labelled frames (pure numpy metrics).

What is measured, on the shipped artefact (onnxruntime, not Keras):

- argmax accuracy, per-class precision/recall/F1, confusion matrix and the bundle's keep
  decisions (:func:`trainer.model.train.classification_metrics`);
- single hit vs rest with ``p(single)`` as the score: ROC curve and its area (trapezoids,
  ties handled as one step), precision-recall curve and average precision
  (``AP = Σ (R_n − R_{n−1}) P_n`` over decreasing thresholds, as scikit-learn);
- calibration of the top-label confidence: reliability diagram on ``n_bins`` equal-width
  bins and the expected calibration error ``ECE = Σ_b n_b/N |acc_b − conf_b|``;
- when the graph outputs ``template_distance``: the template-only classifier (single iff
  distance ≤ t) beside the CNN: ROC AUC, AP and the best-F1 operating point.

:func:`evaluate_bundle` (``trainer evaluate``) reads labelled frames, runs the bundle's
graph on them and writes ``metrics.json`` and the plots; :func:`summary_lines` says it in
a few lines. onnxruntime and matplotlib are imported inside the functions that use them.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hitstream.errors import ConfigError
from trainer.data.backgrounds import RunBackgrounds

CURVE_POINTS = 200  # points kept per curve in the JSON
METRICS_FILE = "metrics.json"


def run_graph(
    model_path: str | os.PathLike[str],
    frames: np.ndarray,
    input_name: str = "frames",
    batch: int = 128,
    threads: int = 0,
    progress: bool = True,
    backgrounds: RunBackgrounds | None = None,
) -> dict[str, np.ndarray]:
    """Every output of an ONNX graph for ``frames``, run with onnxruntime on the CPU in
    batches (tqdm bar on stderr). A graph with a second input (the run's background) gets
    each frame's run map from ``backgrounds`` (zeros when none are given)."""
    import onnxruntime as ort
    from tqdm import tqdm

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(os.fspath(model_path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    extra = [i.name for i in session.get_inputs() if i.name != input_name]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    with tqdm(total=len(frames), unit="frame", desc="evaluate", disable=not progress) as bar:
        for a in range(0, len(frames), batch):
            x = np.ascontiguousarray(frames[a : a + batch], np.float32)
            feed = {input_name: x}
            if extra:
                feed[extra[0]] = (
                    backgrounds.of(np.arange(a, a + len(x)))
                    if backgrounds is not None
                    else np.zeros((1, *x.shape[1:]), np.float32)
                )
            for n, v in zip(names, session.run(None, feed), strict=True):
                parts[n].append(v)
            bar.update(len(x))
    return {n: np.concatenate(v) if v else np.zeros(0, np.float32) for n, v in parts.items()}


def _ranked(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct threshold (decreasing)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(positive, bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ConfigError(f"scores {s.shape} and positives {y.shape} must be equal 1-d shapes")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1] if len(s) else np.zeros(0, int)
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return tp.astype(np.float64), fp.astype(np.float64), s[last]


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
    """False and true positive rates at every distinct threshold (score ≥ threshold),
    starting at (0, 0)."""
    tp, fp, thr = _ranked(scores, positive)
    p, n = max(tp[-1] if len(tp) else 0, 0), (fp[-1] if len(fp) else 0)
    tpr = np.r_[0.0, tp / p] if p else np.zeros(len(tp) + 1)
    fpr = np.r_[0.0, fp / n] if n else np.zeros(len(fp) + 1)
    return {"fpr": fpr, "tpr": tpr, "thresholds": np.r_[np.inf, thr]}


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids); NaN without both classes."""
    y = np.asarray(positive, bool)
    if y.all() or not y.any():
        return float("nan")
    r = roc_curve(scores, positive)
    return float(np.trapezoid(r["tpr"], r["fpr"]))


def pr_curve(scores: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
    """Precision and recall at every distinct threshold (score ≥ threshold), decreasing."""
    tp, fp, thr = _ranked(scores, positive)
    p = tp[-1] if len(tp) else 0.0
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / p if p else np.zeros_like(tp)
    return {"precision": precision, "recall": recall, "thresholds": thr}


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """``Σ (R_n − R_{n−1}) P_n``; NaN without positives."""
    if not np.asarray(positive, bool).any():
        return float("nan")
    c = pr_curve(scores, positive)
    return float(np.sum(np.diff(np.r_[0.0, c["recall"]]) * c["precision"]))


def best_f1(scores: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """The threshold (score ≥ threshold) with the highest F1, with its precision/recall."""
    c = pr_curve(scores, positive)
    if not len(c["thresholds"]):
        return {"threshold": float("nan"), "precision": 0.0, "recall": 0.0, "f1": 0.0}
    p, r = c["precision"], c["recall"]
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    k = int(np.argmax(f1))
    return {
        "threshold": float(c["thresholds"][k]),
        "precision": float(p[k]),
        "recall": float(r[k]),
        "f1": float(f1[k]),
    }


def calibration(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Reliability of the top-label confidence on equal-width bins over [0, 1] and the
    expected calibration error (ECE)."""
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(labels, np.int64)
    conf = p.max(axis=1) if len(p) else np.zeros(0)
    correct = (p.argmax(axis=1) == y) if len(p) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    conf_sum = np.bincount(b, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(b, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = conf_sum / count
        acc = acc_sum / count
    used = count > 0
    ece = float(np.sum(count[used] * np.abs(acc[used] - mean_conf[used])) / max(1, len(y)))
    return {
        "bins": n_bins,
        "edges": edges.tolist(),
        "count": count.tolist(),
        "confidence": [float(v) if u else None for v, u in zip(mean_conf, used, strict=True)],
        "accuracy": [float(v) if u else None for v, u in zip(acc, used, strict=True)],
        "ece": ece,
    }


def _thin(curve: Mapping[str, np.ndarray], n: int = CURVE_POINTS) -> dict[str, list[float]]:
    """At most ``n`` points of a curve (evenly spaced indices, ends kept) for the JSON."""
    m = len(next(iter(curve.values())))
    idx = np.unique(np.linspace(0, m - 1, min(n, m)).round().astype(int)) if m else []
    return {k: [float(x) for x in np.asarray(v)[idx]] for k, v in curve.items()}


def binary_report(scores: np.ndarray, positive: np.ndarray) -> dict[str, Any]:
    """ROC AUC, AP, best-F1 operating point and thinned curves for one score."""
    return {
        "roc_auc": roc_auc(scores, positive),
        "average_precision": average_precision(scores, positive),
        "best_f1": best_f1(scores, positive),
        "roc": _thin(roc_curve(scores, positive)),
        "pr": _thin(pr_curve(scores, positive)),
    }


def evaluate_outputs(
    outputs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    classes: Sequence[str],
    thresholds: Mapping[str, float] | None = None,
    positive_class: str = "single",
    n_bins: int = 10,
) -> dict[str, Any]:
    """All metrics of the module docstring from a graph's outputs and integer labels."""
    from trainer.model.train import classification_metrics

    classes = list(classes)
    if positive_class not in classes:
        raise ConfigError(f"class {positive_class!r} is not among the bundle's classes {classes}")
    prob = np.asarray(outputs["probabilities"], np.float64)
    y = np.asarray(labels, np.int64)
    k = classes.index(positive_class)
    positive = y == k
    out: dict[str, Any] = classification_metrics(prob, y, classes, dict(thresholds or {}))
    out["positive_class"] = positive_class
    out["cnn"] = binary_report(prob[:, k], positive)
    out["calibration"] = calibration(prob, y, n_bins)
    if "template_distance" in outputs:
        d = np.asarray(outputs["template_distance"], np.float64)
        t = binary_report(-d, positive)  # nearer = more single-like
        op = t["best_f1"]
        op["threshold"] = -op["threshold"]  # back to a distance: single iff d <= threshold
        t["roc"]["thresholds"] = [-v for v in t["roc"]["thresholds"]]
        t["pr"]["thresholds"] = [-v for v in t["pr"]["thresholds"]]
        t["score"] = "template_distance (single iff distance <= threshold)"
        t["median_distance"] = {
            c: float(np.median(d[y == i])) if np.any(y == i) else None
            for i, c in enumerate(classes)
        }
        out["templates"] = t
    return out


def write_plots(out_dir: Path, metrics: Mapping[str, Any], classes: Sequence[str]) -> list[Path]:
    """``confusion.png``, ``roc_pr.png`` and ``calibration.png`` in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.model.export import write_confusion_png

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "confusion.png", out_dir / "roc_pr.png", out_dir / "calibration.png"]
    write_confusion_png(paths[0], {"evaluation": metrics}, classes)

    pos = metrics["positive_class"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 4))
    curves = [("CNN p(" + pos + ")", metrics["cnn"])]
    if "templates" in metrics:
        curves.append(("template distance", metrics["templates"]))
    for name, m in curves:
        a1.plot(m["roc"]["fpr"], m["roc"]["tpr"], label=f"{name}: AUC {m['roc_auc']:.3f}")
        (line,) = a2.plot(
            m["pr"]["recall"],
            m["pr"]["precision"],
            label=f"{name}: AP {m['average_precision']:.3f}",
        )
        bf = m["best_f1"]
        a2.plot(bf["recall"], bf["precision"], "o", ms=5, color=line.get_color())
    a1.plot([0, 1], [0, 1], ":", color="grey")
    a1.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {pos} vs rest")
    a2.set(xlabel="recall", ylabel="precision", title="precision-recall (dot: best F1)")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is a1 else "lower left")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=80)
    plt.close(fig)

    cal = metrics["calibration"]
    edges = np.asarray(cal["edges"])
    centres = 0.5 * (edges[1:] + edges[:-1])
    acc = np.array([np.nan if v is None else v for v in cal["accuracy"]])
    fig, (a1, a2) = plt.subplots(
        2, 1, figsize=(4.8, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    a1.bar(centres, np.nan_to_num(acc), width=np.diff(edges), edgecolor="k", alpha=0.7)
    a1.plot([0, 1], [0, 1], ":", color="grey")
    a1.set(ylabel="accuracy", title=f"reliability (top label), ECE {cal['ece']:.3f}")
    a2.bar(centres, cal["count"], width=np.diff(edges), edgecolor="k", color="grey")
    a2.set(xlabel="confidence", ylabel="frames")
    fig.tight_layout()
    fig.savefig(paths[2], dpi=80)
    plt.close(fig)
    return paths


# --- a bundle on labelled runs (trainer evaluate) ----------------------------------------


def jsonable(x: Any) -> Any:
    """Plain JSON: NaN and ±Inf become null, numpy scalars Python numbers."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, str):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def evaluate_bundle(
    model: Path,
    runs: list[tuple[Path, str]],
    labels: Path,
    out: Path | None = None,
    positive: str = "single",
    bins: int = 10,
    batch: int = 128,
    threads: int = 0,
    progress: bool = True,
    photon_unit: float = 1.0,
) -> dict[str, Any]:
    """Run the bundle's graph over the labelled frames and compute (and write) metrics."""
    from hitstream.bundle import load_bundle
    from hitstream.labels import read_labels
    from trainer.data.backgrounds import labelled_backgrounds
    from trainer.data.ingest import load_labelled

    bundle = load_bundle(model, verify=True)
    data = load_labelled(
        runs,
        read_labels(labels),
        bundle.classes,
        frame_shape=bundle.frame_shape,
        photon_unit=photon_unit,
        progress=progress,
    )
    bgs = labelled_backgrounds(data, photon_unit) if bundle.background_input else None
    t0 = time.perf_counter()
    outputs = run_graph(
        bundle.model_path, data.frames, bundle.input_name, batch, threads, progress, bgs
    )
    seconds = time.perf_counter() - t0
    metrics = evaluate_outputs(outputs, data.y, bundle.classes, bundle.thresholds, positive, bins)
    metrics["novelty"] = novelty_of(bundle, outputs["probabilities"], data, bgs)
    metrics = jsonable(
        {
            "bundle": {"path": str(model), "name": bundle.name, "version": bundle.version},
            "data": {
                "runs": [str(p) for p, _ in runs],
                "dataset": runs[0][1],
                "labels": str(labels),
                "counts": data.counts(),
            },
            "inference_seconds": round(seconds, 3),
            **metrics,
        }
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        write_plots(out, metrics, bundle.classes)
    return metrics


def summary_lines(m: dict[str, Any]) -> list[str]:
    """A short human summary of :func:`evaluate_bundle`'s metrics."""

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    pos = m["positive_class"]
    lines = [
        f"{m['bundle']['name']}:{m['bundle']['version']} on {m['frames']} frames "
        f"{m['data']['counts']}: accuracy {f(m['accuracy'])}"
    ]
    for c, k in m.get("keep", {}).items():
        lines.append(
            f"  {c} kept at p>={k['threshold']:.3f}: precision {f(k['precision'])}, "
            f"recall {f(k['recall'])}"
        )
    for name, key in (("CNN p(" + pos + ")", "cnn"), ("template distance", "templates")):
        if key in m:
            b = m[key]
            lines.append(
                f"  {pos} vs rest by {name}: ROC AUC {f(b['roc_auc'])}, AP "
                f"{f(b['average_precision'])}, best F1 {f(b['best_f1']['f1'])} at "
                f"{b['best_f1']['threshold']:.4g} (precision {f(b['best_f1']['precision'])}, "
                f"recall {f(b['best_f1']['recall'])})"
            )
    lines.append(f"  calibration: ECE {f(m['calibration']['ece'])}")
    nov = m.get("novelty") or {}
    if nov.get("novel"):
        lines.append("  WARNING: " + "; ".join(nov["reasons"]) + ": " + str(nov["advice"]))
    else:
        lines.append(f"  like the training data (novelty score {f(nov.get('score'))})")
    return lines


def novelty_of(
    bundle: Any, probabilities: np.ndarray, data: Any, backgrounds: RunBackgrounds | None
) -> dict[str, Any]:
    """How far the frames are from the bundle's training data (:mod:`hitstream.novelty`),
    one report over all runs (the highest run background level counts)."""
    from hitstream.novelty import NoveltyMonitor

    monitor = NoveltyMonitor(
        bundle.manifest.get("novelty"), bundle.classes, window=max(1, len(probabilities))
    )
    level = None
    if backgrounds is not None and len(backgrounds.maps):
        valid = bundle.geometry.valid_pixels()
        level = max(float(m[valid].mean()) for m in backgrounds.maps)
    monitor.observe(probabilities, level)
    return monitor.report().as_dict()
