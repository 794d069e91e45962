#!/usr/bin/env bash
# Where one GPU worker spends its time. One replay -> serve pair under py-spy (per-thread
# stacks, raw format: RES/serve.txt, RES/replay.txt), then one-worker end-to-end variants
# (model, frames per message, IO binding, CPU provider as the baseline of the same run).
# On the host:  source .gpuwheels/gpu-install.sh && bash bench/gpu_profile.sh
# Dry run here: PROVIDER=cpu PYTHON=.venv/bin/python SPY=.venv/bin/py-spy FRAMES=2000 bash bench/gpu_profile.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
PROVIDER=${PROVIDER:-cuda}
FRAMES=${FRAMES:-20000}
OUT=${OUT:-/tmp/hitstream-gpu}
RES=${RES:-$OUT}
MODEL=${MODEL:-models/default}
SPY=${SPY:-py-spy}
mkdir -p "$OUT" "$RES"
"$PY" -c "from hitstream.simulate.replay_runs import write_synthetic_run as s; s('$OUT/run.h5', $FRAMES)"
spy=()
if "$SPY" record --nonblocking -o "$OUT/spy-check.txt" --format raw -- "$PY" -c "import time; time.sleep(0.3)" \
    >/dev/null 2>&1; then
  spy_for() { echo "$SPY" record --threads --idle --nonblocking --rate 200 --format raw -o "$1" --; }
else
  echo "py-spy cannot record here; profiling skipped"
  spy_for() { :; }
fi
port=$("$PY" -c "from streamer.demo import free_port; print(free_port())")
prof=$(mktemp -d "$OUT/profile-XXXX")
# shellcheck disable=SC2046
$(spy_for "$RES/serve.txt") "$PY" -m streamer serve --model "$MODEL" --endpoint "tcp://127.0.0.1:$port" \
  --feed-mode PULL --out "$prof" --run prof --metrics-port -1 --provider "$PROVIDER" \
  --summary-json "$OUT/profile_summary.json" --set output.min_free_bytes=0 > "$prof/serve.log" 2>&1 &
serve=$!
for _ in $(seq 600); do grep -q "streamer ready" "$prof/serve.log" && break; sleep 0.1; done
# shellcheck disable=SC2046
$(spy_for "$RES/replay.txt") "$PY" -m streamer replay "$OUT/run.h5" --dataset data \
  --endpoint "tcp://127.0.0.1:$port" --mode PUSH -k 32 --expected-clients 1 > "$prof/replay.log" 2>&1
wait $serve
tail -3 "$prof/serve.log"
variant() {  # name, then bench_scaleout arguments
  local name=$1; shift
  "$PY" bench/bench_scaleout.py --topology pairs --workers 1 --frames "$FRAMES" --synthetic \
    --out "$OUT" --json "$OUT/v_$name.json" "$@" > "$OUT/v_$name.txt" 2>&1 || tail -5 "$OUT/v_$name.txt"
  "$PY" -c "import json; r=json.load(open('$OUT/v_$name.json'))[0]; print(f\"{'$name':<28} {r['frames_per_s']:>9.0f} {'yes' if r['each_once'] else 'NO':>6}\")" \
    >> "$OUT/variants.txt"
}
: > "$OUT/variants.txt"
variant "$PROVIDER-default" --provider "$PROVIDER" --model "$MODEL"
variant "$PROVIDER-default-k128" --provider "$PROVIDER" --model "$MODEL" --k 128
variant "$PROVIDER-default-no-iobinding" --provider "$PROVIDER" --model "$MODEL" --serve-args "--set engine.io_binding=false"
variant "$PROVIDER-default-batch256" --provider "$PROVIDER" --model "$MODEL" --serve-args "--batch 256"
variant "$PROVIDER-fast" --provider "$PROVIDER" --model models/fast
variant "cpu-default" --provider cpu --model "$MODEL"
echo
echo "== one worker end to end, $FRAMES frames, synthetic ($(date -u +%F' '%H:%M) UTC) =="
printf '%-28s %9s %6s\n' variant frames/s once
cat "$OUT/variants.txt"
