#!/usr/bin/env bash
# hitstream GPU benchmark: one call on a GPU host with no network.
# Prepare here:   ../shared/tools/gpu-wheels.sh prometheus-client==0.26.0 hdf5plugin==7.1.0 tqdm==4.70.1
#                 (add scipy==1.17.1 extra-geom==1.17.0 for the detector-map rows)
# On the host:    source .gpuwheels/gpu-install.sh && bash bench/gpu.sh
# Dry run on a CPU machine:  PROVIDER=cpu PYTHON=.venv/bin/python bash bench/gpu.sh
# Measures (same run, same frames): engine frames/s on CPU (baseline) and CUDA, with numpy
# input and with pinned staging buffers; then end-to-end replay → streamer → files with
# N workers sharing the GPU. Needs only numpy, h5py, hdf5plugin, pyzmq, msgpack,
# prometheus-client, tqdm and onnxruntime-gpu (no scipy, no TensorFlow). Prints a table last.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
PROVIDER=${PROVIDER:-cuda}
WORKERS=${WORKERS:-1,4,8}
FRAMES=${FRAMES:-20000}
KS=${KS:-32,128}  # frames per message (AGIPD sends up to 352 per train)
OUT=${OUT:-/tmp/hitstream-gpu}
MODEL=${MODEL:-models/default}
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'PYEOF'
import onnxruntime as ort
if hasattr(ort, "preload_dlls"):
    try:
        ort.preload_dlls()
    except Exception as exc:  # noqa: BLE001
        print("preload_dlls failed:", exc)
print("onnxruntime", ort.__version__, ort.get_available_providers())
PYEOF
"$PY" bench/bench_engine.py --model "$MODEL" --providers "cpu,$PROVIDER" --batches 256,1024 --frames 8192 \
    --cpu-frames 512 --json "$OUT/engine.json" > "$OUT/engine.txt" 2>"$OUT/engine.err" || cat "$OUT/engine.err"
"$PY" bench/bench_scaleout.py --model "$MODEL" --provider cpu --topology pairs --workers 1 \
    --frames "$FRAMES" --synthetic --out "$OUT" --json "$OUT/scale_cpu.json" > "$OUT/scale_cpu.txt" \
    2>"$OUT/scale.err" || cat "$OUT/scale.err"
for k in ${KS//,/ }; do
  "$PY" bench/bench_scaleout.py --model "$MODEL" --provider "$PROVIDER" --topology pairs --workers "$WORKERS" \
      --frames "$FRAMES" --k "$k" --synthetic --out "$OUT" --json "$OUT/scale_k$k.json" > "$OUT/scale_k$k.txt" \
      2>"$OUT/scale.err" || cat "$OUT/scale.err"
done
# the detector map on the GPU (detector.map_on = "engine") against the host's, AGIPD 1M end
# to end; needs scipy and extra-geom among the wheels (skipped without them)
DET=""
if "$PY" -c "import scipy, extra_geom" 2>/dev/null; then
  for m in cpu engine; do
    "$PY" bench/bench_detectors.py --model "$MODEL" --detectors AGIPD1M --trains 4 --map-on "$m" \
        > "$OUT/det_$m.txt" 2>"$OUT/det.err" || cat "$OUT/det.err"
    DET="$DET $m"
  done
fi
echo
echo "== hitstream GPU benchmark ($(date -u +%F' '%H:%M) UTC) =="
cat "$OUT/engine.txt" | sed -n '/^engine throughput/,$p'
echo
sed -n '/^scale-out/,$p' "$OUT/scale_cpu.txt"
for k in ${KS//,/ }; do sed -n '/^scale-out/,$p' "$OUT/scale_k$k.txt"; done
for m in $DET; do echo "detector map on $m:"; sed -n '/^detector/,$p' "$OUT/det_$m.txt"; done
