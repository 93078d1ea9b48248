#!/usr/bin/env bash
# Issue 15's GPU checks in one command, for a GPU machine (the device tool's `run`, with `.whl` carried):
#
#   benchmarks/gpu_wheels.sh                   # here, once: the wheels the GPU machine lacks, into .whl/
#   bash benchmarks/gpu_session.sh             # there; here first, on the CPU, every step runs too:
#   WHEELS= PYTHON=.venv/bin/python GPU_BENCH_ARGS=--tiny OUT=/tmp/gs bash benchmarks/gpu_session.sh
#
# Steps, each under its own time limit, all run even when one fails:
#   1. pytest -m gpu tests/test_gpu.py      -> $OUT/pytest_gpu.txt   (the CUDA suite)
#   2. benchmarks/gpu_study.py              -> $OUT/gpu_study.json   (every notebook under papermill)
#   3. benchmarks/gpu.py                    -> $OUT/gpu.json         (edit overheads; copy it to
#      benchmarks/results/gpu.json and run `python benchmarks/gpu_table.py --write` here)
# plus $OUT/session.txt (versions, each step's exit status and seconds) and the first failed notebook.
# Exits 1 if any step failed. At most 120 + 180 + 240 s plus the install (the steps' limits), inside the
# device run's 600 s; gpu.py writes gpu.json after each section, so a cut-short run keeps what it measured.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-session-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
WHEELS=${WHEELS-.whl}  # WHEELS= (empty) skips the install, e.g. in this project's own venv
if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/hpr-site "$WHEELS"/*.whl \
    || { echo "installing the carried wheels failed" | tee "$OUT/session.txt"; exit 3; }
  export PYTHONPATH=/tmp/hpr-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
log() { echo "$*" | tee -a "$OUT/session.txt"; }
: > "$OUT/session.txt"
log "$("$PY" -c 'import sys, torch, transformers; c = torch.cuda.is_available(); print(
    f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
    f"cuda: {torch.cuda.get_device_name(0) if c else None}")' 2>&1)"
failed=0
step() {  # step NAME SECONDS FILE COMMAND...: run it, output to FILE and to the terminal's tail
  local name=$1 limit=$2 file=$3 t0 rc
  shift 3
  t0=$(date +%s)
  timeout "$limit" "$@" > "$file" 2>&1
  rc=$?
  tail -n 25 "$file"
  log "step $name: exit $rc in $(($(date +%s) - t0)) s"
  [ "$rc" -eq 0 ] || failed=1
}
step pytest-gpu 120 "$OUT/pytest_gpu.txt" "$PY" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider
step gpu-study 180 "$OUT/gpu_study.log" "$PY" benchmarks/gpu_study.py --work /tmp/hpr-gpu-study --out "$OUT/gpu_study.json"
for f in /tmp/hpr-gpu-study/study/book/notebooks/failed/*.ipynb; do
  [ -f "$f" ] && cp "$f" "$OUT/failed_$(basename "$f")" && break
done
step gpu-bench 240 "$OUT/gpu_bench.log" "$PY" benchmarks/gpu.py --out "$OUT/gpu.json" ${GPU_BENCH_ARGS:-}
grep -A12 '"targets"' "$OUT/gpu.json" 2> /dev/null | tee -a "$OUT/session.txt"
exit "$failed"
