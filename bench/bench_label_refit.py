"""The labelling page while the model refits: label latency, refit time, held-out accuracy.

Simulates a run no bundle was trained on (``--setting``, :data:`trainer.model.quality.
ADAPT_SETTINGS`), opens it in ``trainer label``'s session and server (``--model``, frames
in proposed order) and labels it over HTTP as a person would, one label every ``--pace``
seconds (the true class):

1. **before**: ``--probe`` labels with no refit running (the baseline of the same run);
2. then up to ``--labels`` labels in all, and a refit asked for (``POST /api/refit``:
   ``trainer finetune`` with its defaults in a child process, then every frame scored
   again), and labels go on at the same pace while it runs: **during**.

Each label's round trip (``POST /api/label``), a page of the grid (``GET /api/page``) and
a picture (``GET /frame/...png``) are timed in both phases. Reported: latency median, 95th
percentile and maximum per phase; the refit's wall time and its held-out accuracy before
and after (on the labels ``finetune`` held out). Table last; ``--json`` keeps every number.

    .venv/bin/python bench/bench_label_refit.py [--frames 2000 --labels 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "label_refit.json"


class Client:
    """Timed requests to the labelling server (one connection per request, as a browser
    without keep-alive)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.times: dict[str, list[float]] = {}

    def call(self, what: str, method: str, path: str, body: Any = None) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        t = time.perf_counter()
        try:
            data = json.dumps(body) if body is not None else None
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, data, headers)
            r = conn.getresponse()
            raw = r.read()
            if r.status != 200:
                raise RuntimeError(f"{method} {path}: {r.status} {raw[:200]!r}")
        finally:
            conn.close()
        self.times.setdefault(what, []).append(1000 * (time.perf_counter() - t))
        ctype = r.getheader("Content-Type") or ""
        return json.loads(raw) if ctype.startswith("application/json") else raw


def label_some(
    client: Client, session: Any, truth: np.ndarray, n: int, pace: float, until: Any = None
) -> int:
    """Label the next ``n`` unlabelled frames of the order (or until ``until()`` is false),
    one every ``pace`` seconds, with a page and a picture fetched every 8 labels."""
    done = 0
    token = session.token
    while done < n and (until is None or until()):
        labels = session.labels[session.order]
        free = np.flatnonzero(labels == "")
        if not len(free):
            break
        frame = int(session.order[free[0]])
        t0 = time.perf_counter()
        client.call("label", "POST", "/api/label",
                    {"id": frame, "class": session.classes[int(truth[frame])]})  # fmt: skip
        if done % 8 == 0:
            page = int(session.position[frame]) // session.page_size
            client.call("page", "GET", f"/api/page?page={page}")
            client.call("picture", "GET", f"/frame/{token}/{frame}.png")
        done += 1
        time.sleep(max(0.0, pace - (time.perf_counter() - t0)))
    return done


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, np.float64)
    if not len(a):
        return {"n": 0}
    return {
        "n": len(a),
        "median_ms": round(float(np.median(a)), 1),
        "p95_ms": round(float(np.percentile(a, 95)), 1),
        "max_ms": round(float(a.max()), 1),
    }


def main(argv: list[str] | None = None) -> int:
    from hitstream.simulate import simulate_parallel
    from trainer.labelling.refit import RefitConfig, Refitter
    from trainer.labelling.server import LabelServer
    from trainer.labelling.session import open_session
    from trainer.model.quality import ADAPT_SETTINGS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    p.add_argument("--setting", default="new", choices=sorted(ADAPT_SETTINGS))
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--labels", type=int, default=200, help="labels when the refit starts")
    p.add_argument("--probe", type=int, default=40, help="labels timed before the refit")
    p.add_argument("--pace", type=float, default=0.25, help="seconds between labels")
    p.add_argument("--seed", type=int, default=31)
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    t_all = time.perf_counter()
    x, y = simulate_parallel(args.frames, args.seed, ADAPT_SETTINGS[args.setting](),
                             desc=args.setting)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run.h5"
        with h5py.File(run, "w") as f:
            f["data"] = x
        del x
        labels = Path(tmp) / "labels.csv"
        session = open_session([run], "data", labels, model=args.model, order="proposed",
                               progress=False)  # fmt: skip
        cfg = RefitConfig(model=args.model, runs=(run,), dataset="data",
                          workdir=Path(tmp) / "refits", every=0)  # fmt: skip
        refit = Refitter(session, cfg)
        with LabelServer(session, refitter=refit) as server:
            before = Client(server.port)
            label_some(before, session, y, args.probe, args.pace)
            for frame in session.order[: args.labels].tolist():  # the rest of the first batch
                if session.labels[frame] == "":
                    session.set_label(int(frame), session.classes[int(y[frame])])
            t0 = time.perf_counter()
            during = Client(server.port)
            if not during.call("refit", "POST", "/api/refit", {})["started"]:
                raise RuntimeError(f"no refit: {refit.state()}")
            n_during = label_some(during, session, y, 10**9, args.pace,
                                  until=lambda: refit.state()["running"])  # fmt: skip
            refit.wait()
            wall = time.perf_counter() - t0
            state = refit.state()
    if state["error"]:
        raise RuntimeError(state["error"])
    h = state["history"][-1]
    results = {
        "bench": "label_refit",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"
        },
        "refit": {**h, "wall_s": round(wall, 1), "labels_during": n_during},
        "before": {k: stats(v) for k, v in before.times.items()},
        "during": {k: stats(v) for k, v in during.times.items() if k != "refit"},
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(format_table(results))
    return 0


def format_table(r: dict[str, Any]) -> str:
    s, h = r["settings"], r["refit"]
    lines = [
        f"\nlabelling while the model refits: setting {s['setting']}, {s['frames']} frames, "
        f"refit at {h['labels']} labels, one label every {s['pace']} s, "
        f"{r['host']['cpus']} CPUs",
        f"refit: {h['wall_s']:.0f} s wall (trainer finetune defaults + scoring every frame), "
        f"{h['labels_during']} labels given meanwhile; held-out accuracy "
        f"{h['before']:.3f} -> {h['after']:.3f} on {h['holdout']} frames "
        f"(95 % {h['after_ci95'][0]:.2f}–{h['after_ci95'][1]:.2f})",
        f"{'request':<10} {'phase':<8} {'n':>4} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}",
    ]
    for what in ("label", "page", "picture"):
        for phase in ("before", "during"):
            st = r[phase].get(what, {"n": 0})
            if st["n"]:
                lines.append(
                    f"{what:<10} {phase:<8} {st['n']:>4} {st['median_ms']:>10.1f} "
                    f"{st['p95_ms']:>8.1f} {st['max_ms']:>8.1f}"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
