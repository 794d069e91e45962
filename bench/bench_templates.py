"""Template bank: polar-FFT matching against the seed's brute force, speed and ranking quality.

Speed (same run, same bank of ``--templates`` simulated single hits, CPU):

- seed brute force: seed preprocessing, 36 rotations per template (7,200 rotated templates
  for 200), one float32 GEMM per batch (``exact_top=0``: the GEMM alone, its fastest form);
- the note's own loop (one ``np.linalg.norm`` per frame and rotated template), on one frame;
- polar, numpy, from raw frames (binning, cleaning, polar map, spectra, matching) and the
  matching alone (spectra given);
- polar as the exported ONNX graph in onnxruntime (CPU), with ``--onnx``.

Timings are medians of ``--repeats`` interleaved rounds. ``--blas-threads N`` sets the BLAS
threads (before numpy loads); compare methods within one run only.

Ranking quality, three preprocessings of the frames (plus ablations of ours):

- **raw pixels L2**: brute force (36 × 5°) on the photon counts as read;
- **seed**: brute force on seed-preprocessed frames (negatives → 0, max → 255);
- **ours**: polar matching (2×2 binning, hot-pixel cap, linear + sqrt-of-smoothed channels,
  per-channel normalisation, frame noise correction).

(1) *Which template*: ``--particles`` single particles (simulator, random 3-D orientation);
the template of each is one noisy shot of it; ``--per-particle`` further shots rotate it
in-plane by random known angles (noise-free pattern rotated with scipy, then Poisson noise
and hot pixels). Reported: how often the nearest template is the true one, and the median
angle error (mod 180°) of those, at realistic photon counts (5–95 %: 300–3,000 photons per
frame, like CXIDB 58), at 10× and noise-free.
(2) *Single vs the rest*: a simulated run (``--run-frames``, default class mix); the bank is
its first ``--bank`` singles; ROC-AUC of the template distance for single vs multiple,
empty, other and all non-single frames.

Results: a table on stdout, ``templates_bench.json`` and ``templates_bench.png`` in ``--out``.

    .venv/bin/python bench/bench_templates.py --blas-threads 1
"""

from __future__ import annotations

import os
import sys


def _early_threads(argv: list[str]) -> None:
    """``--blas-threads N`` must act before numpy loads its BLAS."""
    for k, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--blas-threads=") else None
        if a == "--blas-threads" and k + 1 < len(argv):
            value = argv[k + 1]
        if value:
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[var] = value


_early_threads(sys.argv[1:])

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402
from scipy.stats import rankdata  # noqa: E402

from hitstream.geometry import DetectorGeometry  # noqa: E402
from hitstream.simulate import SIM_CLASSES, SimConfig, simulate_frames  # noqa: E402
from trainer.templates.bank import build_bank  # noqa: E402
from trainer.templates.features import BruteForceConfig, PolarConfig  # noqa: E402
from trainer.templates.matching import BruteForceMatcher, match_frames  # noqa: E402

GEOM = DetectorGeometry()
VALID = GEOM.valid_pixels()
Z95 = 1.6448536269514722

METHODS: dict[str, tuple[str, object]] = {
    "raw pixels L2 (brute force)": ("bruteforce", BruteForceConfig(preprocessing="raw")),
    "seed (brute force)": ("bruteforce", BruteForceConfig()),
    "ours (polar)": ("polar", PolarConfig()),
}
ABLATIONS: dict[str, tuple[str, object]] = {
    "ours, linear channel only": ("polar", PolarConfig(linear_weight=1.0)),
    "ours, sqrt channel only": ("polar", PolarConfig(linear_weight=0.0)),
    "ours, no noise correction": ("polar", PolarConfig(noise_floor=1.0)),
    "ours, no smoothing": ("polar", PolarConfig(smooth_px=0.0)),
}


# --- data ---------------------------------------------------------------------------


def lognormal_photons(rng: np.random.Generator, n: int, lo=300.0, hi=3000.0) -> np.ndarray:
    a, b = np.log(lo), np.log(hi)
    return np.exp(rng.normal((a + b) / 2, (b - a) / (2 * Z95), n))


def shot(rng, expected: np.ndarray, photons: float, noise: bool) -> np.ndarray:
    """One frame of a noise-free pattern: masked, scaled, Poisson noise and hot pixels."""
    e = np.maximum(expected, 0) * VALID
    e *= photons / e.sum()
    if not noise:
        return e.astype(np.float32)
    f = rng.poisson(e).astype(np.float32)
    n_hot = rng.poisson(0.2)
    if n_hot:
        idx = rng.choice(np.flatnonzero(VALID), n_hot)
        f.flat[idx] += rng.uniform(10, 300, n_hot).astype(np.float32)
    return f


def rotation_set(n_particles: int, per: int, scale: float, noise: bool, seed: int = 7):
    """Templates (one shot per particle) and rotated shots of the same particles."""
    rng = np.random.default_rng(seed)
    open_geom = DetectorGeometry(hole_radius_px=0.0, gap_rows=0)  # the hole and gap come later
    cfg = SimConfig(geometry=open_geom, fractions=(1, 0, 0, 0))
    pats = simulate_frames(0, n_particles, seed, cfg, noise=False).frames
    photons = lognormal_photons(rng, n_particles * (per + 1)) * scale
    tmpl = np.stack([shot(rng, p, photons[i], noise) for i, p in enumerate(pats)])
    frames, src, ang = [], [], []
    k = n_particles
    for i, p in enumerate(pats):
        for a in rng.uniform(0, 360, per):
            rot = ndimage.rotate(p, a, reshape=False, order=1)
            frames.append(shot(rng, rot, photons[k], noise))
            src.append(i)
            ang.append(a)
            k += 1
    return tmpl, np.stack(frames), np.array(src), np.array(ang)


def angle_error(a, b) -> np.ndarray:
    d = np.abs(np.asarray(a) - np.asarray(b)) % 180
    return np.minimum(d, 180 - d)


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney)."""
    r = rankdata(np.concatenate([pos, neg]))
    n1, n2 = len(pos), len(neg)
    return float((r[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n2)) if n1 and n2 else float("nan")


def matcher_for(mode: str, cfg, frames: np.ndarray):
    if mode == "polar":
        return build_bank(frames, polar=cfg).matcher()
    return build_bank(frames, mode="bruteforce", bruteforce=cfg).matcher()


# --- quality ------------------------------------------------------------------------


def identification(args, methods) -> dict:
    levels = {
        "realistic (300-3000 photons)": (1.0, True),
        "10x photons": (10.0, True),
        "noise-free": (1.0, False),
    }
    out: dict = {}
    for level, (scale, noise) in levels.items():
        tmpl, frames, src, ang = rotation_set(args.particles, args.per_particle, scale, noise)
        med = float(np.median(frames.sum(axis=(1, 2))))
        out[level] = {"median_photons": med}
        for name, (mode, cfg) in methods.items():
            r = match_frames(matcher_for(mode, cfg, tmpl), frames, batch=64)
            ok = r.index == src
            err = angle_error(r.angle_deg[ok], ang[ok])
            out[level][name] = {
                "top1": float(ok.mean()),
                "angle_err_median": float(np.median(err)) if ok.any() else None,
                "angle_err_p90": float(np.percentile(err, 90)) if ok.any() else None,
            }
            print(
                f"  {level:28s} {name:30s} true template {ok.mean():6.1%}  "
                f"angle error median {out[level][name]['angle_err_median'] or float('nan'):6.2f}°",
                flush=True,
            )
    return out


def single_vs_rest(args, methods) -> dict:
    run = simulate_frames(0, args.run_frames, seed=args.seed)
    single = np.flatnonzero(run.labels == 0)
    bank_idx = single[: args.bank]
    rest = np.setdiff1d(np.arange(len(run)), bank_idx)
    lab = run.labels[rest]
    out: dict = {"counts": {c: int(np.sum(lab == i)) for i, c in enumerate(SIM_CLASSES)}}
    for name, (mode, cfg) in methods.items():
        d = match_frames(matcher_for(mode, cfg, run.frames[bank_idx]), run.frames[rest], 64)
        pos = -d.distance[lab == 0]
        res = {c: roc_auc(pos, -d.distance[lab == i]) for i, c in enumerate(SIM_CLASSES) if i}
        res["all"] = roc_auc(pos, -d.distance[lab != 0])
        out[name] = res
        print(f"  {name:30s} " + "  ".join(f"{k} {v:.3f}" for k, v in res.items()), flush=True)
    return out


# --- speed --------------------------------------------------------------------------


def _median_time(fn, repeats: int) -> float:
    fn()  # warm up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def speed(args) -> dict:
    single_cfg = SimConfig(fractions=(1, 0, 0, 0))
    templates = simulate_frames(0, args.templates, seed=1, config=single_cfg).frames
    frames = simulate_frames(0, args.speed_frames, seed=2).frames
    t = time.perf_counter()
    polar_bank = build_bank(templates)
    polar = polar_bank.matcher()
    t_polar_build = time.perf_counter() - t
    t = time.perf_counter()
    brute = BruteForceMatcher(build_bank(templates, mode="bruteforce").templates, exact_top=0)
    t_brute_build = time.perf_counter() - t
    spectra = polar.features.features_real(frames)
    fb = frames[: args.brute_frames]
    rows: dict[str, dict] = {}
    times: dict[str, list[float]] = {"brute": [], "polar": [], "core": []}
    for _ in range(args.repeats):  # interleaved, so load changes hit all alike
        times["brute"].append(_median_time(lambda: brute.match(fb), 1) / len(fb))
        times["polar"].append(_median_time(lambda: polar.match(frames), 1) / len(frames))
        times["core"].append(_median_time(lambda: polar.match_spectra(spectra), 1) / len(frames))
    per = {k: float(np.median(v)) for k, v in times.items()}
    n_rot = brute.config.n_rotations
    rows["seed brute force (GEMM)"] = {"s_per_frame": per["brute"], "templates": len(brute.rotated)}
    if args.loop:
        x = brute.config.prepare(frames[:1]).reshape(-1)
        t = time.perf_counter()
        for tpl in brute.rotated:
            np.linalg.norm(x - tpl)
        rows["seed loop (the note's)"] = {"s_per_frame": time.perf_counter() - t}
    rows["polar, numpy, raw frames in"] = {"s_per_frame": per["polar"]}
    rows["polar, numpy, matching only"] = {"s_per_frame": per["core"]}
    if args.onnx:
        rows["polar, ONNX Runtime CPU"] = {"s_per_frame": onnx_speed(polar_bank, frames, args)}
    base = per["brute"]
    for r in rows.values():
        r["frames_per_s"] = 1.0 / r["s_per_frame"]
        r["x_brute_force"] = base / r["s_per_frame"]
    return {
        "templates": args.templates,
        "rotations": n_rot,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "cpu_count": os.cpu_count(),
        "build_s": {"polar": t_polar_build, "bruteforce": t_brute_build},
        "rows": rows,
    }


def onnx_speed(bank, frames: np.ndarray, args) -> float:
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import onnxruntime as ort
    import tf2onnx

    from trainer.model.inference_graph import template_function

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    fn = template_function(bank)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "templates.onnx"
        tf2onnx.convert.from_function(
            fn, input_signature=fn.input_signature, opset=17, output_path=str(path)
        )
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.ort_threads
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {"frames": frames}
        return _median_time(lambda: sess.run(None, feed), args.repeats) / len(frames)


# --- report -------------------------------------------------------------------------


def print_speed(sp: dict) -> None:
    print(
        f"\nspeed: {sp['templates']} templates ({sp['templates'] * sp['rotations']} rotated for "
        f"brute force), BLAS threads {sp['blas_threads']}, {sp['cpu_count']} CPUs"
    )
    print(f"  {'method':32s} {'frames/s':>10s} {'ms/frame':>10s} {'x brute force':>14s}")
    for name, r in sp["rows"].items():
        print(
            f"  {name:32s} {r['frames_per_s']:10.1f} {r['s_per_frame'] * 1e3:10.3f} "
            f"{r['x_brute_force']:14.1f}"
        )


def write_png(path: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.6))
    ident = results.get("identification", {})
    if ident:
        levels = list(ident)
        names = [n for n in ident[levels[0]] if n != "median_photons"]
        w = 0.8 / len(names)
        for k, n in enumerate(names):
            axes[0].bar(
                np.arange(len(levels)) + k * w, [ident[lv][n]["top1"] for lv in levels], w, label=n
            )
        axes[0].set_xticks(np.arange(len(levels)) + 0.4 - w / 2)
        axes[0].set_xticklabels(
            [f"{lv}\n(median {ident[lv]['median_photons']:.0f})" for lv in levels], fontsize=7
        )
        axes[0].set_ylabel("nearest template is the true one")
        axes[0].set_title("which template (rotated shots of the same particles)")
    auc = results.get("single_vs_rest", {})
    if auc:
        names = [n for n in auc if n != "counts"]
        cols = ["multiple", "empty", "other", "all"]
        w = 0.8 / len(names)
        for k, n in enumerate(names):
            axes[1].bar(np.arange(len(cols)) + k * w, [auc[n][c] for c in cols], w, label=n)
        axes[1].set_xticks(np.arange(len(cols)) + 0.4 - w / 2)
        axes[1].set_xticklabels([f"single vs {c}" for c in cols], fontsize=8)
        axes[1].set_ylim(0, 1.02)
        axes[1].axhline(0.5, color="grey", lw=0.5)
        axes[1].set_ylabel("ROC-AUC of template distance")
        axes[1].set_title("single vs the rest (simulated run)")
    sp = results.get("speed")
    if sp:
        names = list(sp["rows"])
        axes[2].barh(names, [sp["rows"][n]["frames_per_s"] for n in names], color="tab:green")
        axes[2].set_xscale("log")
        axes[2].set_xlabel("frames/s (CPU)")
        for k, n in enumerate(names):
            axes[2].text(
                sp["rows"][n]["frames_per_s"],
                k,
                f" {sp['rows'][n]['x_brute_force']:.3g}x",
                va="center",
                fontsize=8,
            )
        axes[2].set_title(f"speed, {sp['templates']} templates")
        axes[2].tick_params(axis="y", labelsize=7)
    handles, labels = axes[1 if auc else 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1 if handles else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blas-threads", type=int, help="BLAS threads (set before numpy loads)")
    ap.add_argument("--templates", type=int, default=200, help="bank size for speed [200]")
    ap.add_argument("--speed-frames", type=int, default=512, help="frames timed, polar [512]")
    ap.add_argument("--brute-frames", type=int, default=32, help="frames timed, brute [32]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop", action="store_true", help="also time the note's Python loop")
    ap.add_argument("--onnx", action="store_true", help="also time the ONNX graph (CPU)")
    ap.add_argument("--ort-threads", type=int, default=2)
    ap.add_argument("--particles", type=int, default=30)
    ap.add_argument("--per-particle", type=int, default=4)
    ap.add_argument("--run-frames", type=int, default=1500)
    ap.add_argument("--bank", type=int, default=100, help="bank size for the AUC [100]")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--skip", nargs="*", default=[], choices=("speed", "identification", "auc"))
    ap.add_argument("--out", type=Path, default=Path("bench/out/templates"))
    args = ap.parse_args(argv)
    methods = dict(METHODS) if args.no_ablations else {**METHODS, **ABLATIONS}
    results: dict = {}
    args.out.mkdir(parents=True, exist_ok=True)
    if "identification" not in args.skip:
        print("which template:", flush=True)
        results["identification"] = identification(args, methods)
    if "auc" not in args.skip:
        print("single vs the rest (ROC-AUC):", flush=True)
        results["single_vs_rest"] = single_vs_rest(args, methods)
    if "speed" not in args.skip:
        results["speed"] = speed(args)
        print_speed(results["speed"])
    (args.out / "templates_bench.json").write_text(json.dumps(results, indent=1))
    write_png(args.out / "templates_bench.png", results)
    print(f"\nwrote {args.out / 'templates_bench.json'} and {args.out / 'templates_bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
