"""Fuzz a running streamer: N malformed and good messages through a PULL pipeline.

Starts a :class:`streamer.pipeline.Pipeline` in PULL mode with a shipped bundle
(``--model``, default ``models/fast``) in a thread, and sends it messages from
:class:`streamer.fuzz.FuzzGenerator` over a PUSH socket on 127.0.0.1 (4 in 5 malformed,
20 kinds: random bytes, wrong part counts, bad and deeply nested msgpack, over-limit
msgpack, wrong header types, dtypes and shapes, buffer/shape mismatches, huge declared
shapes, over-size messages, NaN/Inf frames, empty and zero-size frames, foreign sources,
wrong keys and train ids, broken end markers; good
messages carry hostile but harmless metadata). Then checks that the streamer never
stopped, counted every bad message under the predicted reason, wrote every good frame
exactly once, and reports rejection counts by reason, throughput and memory.

    python bench/fuzz_streamer.py [--messages 10000] [--seed 1] [--model models/fast]
                                  [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from streamer.fuzz import fuzz_pipeline
from streamer.readback import read_run

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=10_000, help="messages to send")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--model", type=Path, default=ROOT / "models" / "fast", help="bundle [models/fast]"
    )
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        out = Path(tmp) / "out"
        with tqdm(total=args.messages, unit="msg", file=sys.stderr, disable=None) as bar:
            run = fuzz_pipeline(
                args.model, out, args.messages, args.seed, progress=bar.update, timeout_s=300
            )
        s = run.summary
        tables = read_run(out, "fuzz") if s is not None and s.files else None
        written = (
            sorted(zip(tables.train_id.tolist(), tables.pulse_id.tolist(), strict=True))
            if tables is not None
            else []
        )
    problems = run.tally.check(s.refusals()) if s is not None else ["no summary: run failed"]
    good = sorted(run.tally.good)
    if s is None or s.error is not None:
        problems.append(f"run error: {s.error if s else 'none returned'}")
    if not run.alive_before_end:
        problems.append("the streamer stopped before the end marker")
    if written != good:
        problems.append(f"{len(written)} frames written, {len(good)} good frames sent")
    if s is not None and s.dropped:
        problems.append(f"frames dropped: {s.dropped}")
    if s is not None and not s.accounting.get("balanced"):
        problems.append(f"the frame balance does not hold: {s.accounting}")
    report = {
        "messages": run.tally.messages,
        "bad_messages": run.tally.bad_messages,
        "expected_rejections": run.tally.rejections,
        "rejected_by_reason": {k: int(v) for k, v in sorted((s.refusals() if s else {}).items())},
        "accounting": s.accounting if s else {},
        "kinds_sent": dict(sorted(run.sent.items())),
        "good_frames_sent": len(good),
        "good_frames_written": len(written),
        "elapsed_s": round(run.elapsed_s, 2),
        "messages_per_s": round(run.tally.messages / run.elapsed_s, 1),
        "mib_sent": round(run.bytes_sent / 2**20, 1),
        "rss_start_mib": round(run.rss_start / 2**20, 1),
        "rss_after_10pct_mib": round(run.rss_warm / 2**20, 1),
        "rss_peak_mib": round(run.rss_peak / 2**20, 1),
        "problems": problems,
    }
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
