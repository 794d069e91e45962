"""Run the CPU benchmarks one after another and say what ran and where the results are.

By default each with its own small options (a few minutes in all on 2 CPU cores;
``models/fast`` where a bundle is needed): the simulator, the CXI writer, the bridge
protocol, the inference engine, the template bank, the message fuzzer, replay → streamer
end to end, SIGKILLs of the streamer (what a kill loses, the recovery of its files),
scale-out over workers, ``streamer classify`` of archived runs on a local Dask cluster against
the engine alone, bundle quality on simulated runs, the exported graphs' speed and
fine-tuning to a new run. These are smoke-sized: compare their numbers within one
run only. ``--full`` runs every benchmark with its own default settings instead (the
numbers the README quotes) plus the 30-minute soak (``soak.py``); that takes hours. The GPU
scripts (``gpu.sh``, ``gpu_profile.sh``) are not run here.

Each benchmark's stdout goes to ``OUT/<name>.txt`` (and is echoed), its stderr (progress
bars, logs) to ``OUT/<name>.err``, its JSON, plots or run files to ``OUT/<name>*``;
``OUT/summary.json`` lists them all. Exit status 0 when every benchmark succeeded.

    .venv/bin/python bench/run_all.py [--full] [--only simulate engine] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    """One benchmark run: ``script`` with the options ``args`` (split like a shell;
    ``{out}``: the results directory, ``{tmp}``: a scratch directory for run files, removed
    afterwards)."""

    name: str
    script: str
    args: str = ""
    timeout_s: float = 900.0

    def command(self, out: Path, tmp: Path) -> list[str]:
        args = (a.format(out=out, tmp=tmp) for a in shlex.split(self.args))
        return [sys.executable, str(BENCH / self.script), *args]


QUICK: tuple[Bench, ...] = (
    Bench("simulate", "bench_simulate.py", "--frames 100 --json {out}/simulate.json"),
    Bench("writer", "bench_writer.py", "--frames 500 --json {out}/writer.json"),
    Bench("protocol", "bench_protocol.py", "--frames 512 --repeats 1"),
    Bench(
        "engine",
        "bench_engine.py",
        "--model models/fast --providers cpu --batches 64 --cpu-frames 256 --repeats 2 "
        "--json {out}/engine.json",
    ),
    Bench(
        "templates",
        "bench_templates.py",
        "--templates 50 --speed-frames 128 --brute-frames 8 --repeats 1 --particles 8 "
        "--per-particle 2 --run-frames 300 --bank 30 --no-ablations --out {out}/templates",
    ),
    Bench("fuzz", "fuzz_streamer.py", "--messages 1000 --json {out}/fuzz.json"),
    Bench(
        "streamer",
        "bench_streamer.py",
        "--frames 1000 --models models/fast --modes PUSH --no-baseline --latency-seconds 2 "
        "--out {tmp} --json {out}/streamer.json",
    ),
    Bench("crash", "bench_crash.py", "--kills 3 --out {tmp} --json {out}/crash.json"),
    Bench(
        "scaleout",
        "bench_scaleout.py",
        "--workers 1,2 --frames 1000 --model models/fast --synthetic --out {tmp} "
        "--json {out}/scaleout.json",
    ),
    Bench(
        "classify",
        "bench_classify.py",
        "--model models/fast --runs 2 --frames 500 --overhead-runs 20 --overhead-frames 200 "
        "--repeats 1 --data {tmp} --json {out}/classify.json",
    ),
    Bench("detectors", "bench_detectors.py", "--trains 2 --json {out}/detectors.json"),
    Bench("quality", "bench_quality.py", "models/fast --frames 100"),
    Bench("background-update", "bench_background_update.py", "--rounds 1 --calls 50"),
    Bench("model", "bench_model.py", "--batch 32 --seconds 0.5 --repeats 1"),
    Bench(
        "adapt",
        "bench_adapt.py",
        "--model models/fast --frames 200 --labelled 60 --epochs 1 --json {out}/adapt.json",
    ),
)

HOUR = 3600.0
FULL: tuple[Bench, ...] = (
    Bench("simulate", "bench_simulate.py", "--json {out}/simulate.json", HOUR),
    Bench("writer", "bench_writer.py", "--json {out}/writer.json", HOUR),
    Bench("protocol", "bench_protocol.py", "", HOUR),
    Bench("engine", "bench_engine.py", "--providers cpu --json {out}/engine.json"),
    Bench("templates", "bench_templates.py", "--out {out}/templates", 2 * HOUR),
    Bench("fuzz", "fuzz_streamer.py", "--json {out}/fuzz.json", HOUR),
    Bench(
        "streamer",
        "bench_streamer.py",
        "--models models/default,models/fast --out {tmp} --json {out}/streamer.json",
        2 * HOUR,
    ),
    Bench("crash", "bench_crash.py", "--out {tmp} --json {out}/crash.json", HOUR),
    Bench(
        "scaleout",
        "bench_scaleout.py",
        "--model models/fast --out {tmp} --json {out}/scaleout.json",
        2 * HOUR,
    ),
    Bench("classify", "bench_classify.py", "--data {tmp} --json {out}/classify.json", HOUR),
    Bench("detectors", "bench_detectors.py", "--trains 8 --json {out}/detectors.json", HOUR),
    Bench("quality", "bench_quality.py", "models/default models/fast", 2 * HOUR),
    Bench("background-update", "bench_background_update.py", ""),
    Bench("model", "bench_model.py", "", HOUR),
    Bench("adapt", "bench_adapt.py", "--json {out}/adapt.json", 2 * HOUR),
    Bench("soak", "soak.py", "--out {out}/soak --run-file {tmp}/run.h5", 2 * HOUR),
)


def run_one(bench: Bench, out: Path) -> dict[str, object]:
    """Run one benchmark (cwd: the repository), its output into ``out``; what happened."""
    txt, err = out / f"{bench.name}.txt", out / f"{bench.name}.err"
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix=f"hitstream-bench-{bench.name}-") as tmp,
        open(txt, "w", encoding="utf-8") as so,
        open(err, "w", encoding="utf-8") as se,
    ):
        cmd = bench.command(out, Path(tmp))
        print(f"\n== {bench.name}: {' '.join(cmd[1:])}", flush=True)
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=so, stderr=se, timeout=bench.timeout_s)
            status = "ok" if rc.returncode == 0 else f"FAILED (exit {rc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"FAILED (over {bench.timeout_s:.0f} s)"
    seconds = time.perf_counter() - t0
    print(txt.read_text(encoding="utf-8").rstrip(), flush=True)
    if status != "ok":
        tail = err.read_text(encoding="utf-8", errors="replace").splitlines()[-10:]
        print("\n".join(["-- stderr (last lines):", *tail]), flush=True)
    results = sorted(
        str(p.relative_to(out)) for p in out.glob(f"{bench.name}*") if p not in (txt, err)
    )
    return {"name": bench.name, "status": status, "seconds": round(seconds, 1),
            "command": cmd[1:], "stdout": txt.name, "stderr": err.name,
            "results": results}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="default settings and the long ones")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    p.add_argument("--list", action="store_true", help="list the benchmarks and stop")
    p.add_argument("--out", type=Path, help="results directory [bench/out/<UTC time>]")
    args = p.parse_args(argv)
    plan = FULL if args.full else QUICK
    if args.list:
        for b in plan:
            print(f"{b.name:<10} {b.script} {b.args}")
        return 0
    if args.only:
        unknown = set(args.only) - {b.name for b in plan}
        if unknown:
            p.error(f"unknown benchmarks {sorted(unknown)}; see --list")
        plan = tuple(b for b in plan if b.name in args.only)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = (args.out or BENCH / "out" / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = [run_one(b, out) for b in plan]
    summary = {"mode": "full" if args.full else "quick", "out": str(out), "benchmarks": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"\n== {len(rows)} benchmarks ({summary['mode']}) in "
          f"{time.perf_counter() - t0:.0f} s; results in {out}")  # fmt: skip
    print(f"{'benchmark':<10} {'status':<22} {'seconds':>8}  results")
    for r in rows:
        results = r["results"]
        assert isinstance(results, list)
        files = ", ".join([str(r["stdout"]), *results])
        print(f"{r['name']:<10} {r['status']:<22} {r['seconds']:>8.0f}  {files}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
