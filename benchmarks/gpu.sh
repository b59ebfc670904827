#!/usr/bin/env bash
# IntentRec benchmarks on a lent GPU machine (no network there). From the repository root:
#
#   bash benchmarks/gpu.sh [OUT_DIR]          # OUT_DIR defaults to $OUT, else runs/bench-gpu
#
# 1. installs the carried wheels (polars, polars-runtime-32, omegaconf; the image has torch,
#    pytorch-lightning, torchmetrics, numpy, pyyaml, rich, psutil) from the first folder of
#    $WHEELS, .whl, shared/wheels that holds *.whl -- see benchmarks/README.md for filling it;
# 2. installs this checkout without dependencies (`pip install --no-deps -e .`; falls back to
#    running from the checkout when that cannot build offline);
# 3. runs `python -m benchmarks.run --device cuda` one section at a time (mfu, train, eval,
#    loss, data, quality), each under `timeout`, all within $BENCH_BUDGET_S seconds (default
#    480), appending to OUT_DIR/results.jsonl; results.md and log.txt are written there too.
#
# Environment: WHEELS (wheel folder), BENCH_BUDGET_S (whole script), SIZES (data sizes,
# e.g. 1M,10M,100M; default 1M,10M), BENCH_QUICK=1 (tiny sizes: a smoke test), PYTHON,
# BENCH_DEVICE (default cuda; cpu only to try this script where there is no GPU),
# BENCH_NO_INSTALL=1 (skip both installs: the environment already has everything),
# BENCH_RUNS (where the quality section looks for `make train` runs; default runs).
#
# stdout: the summary tables at the end; the JSON lines and progress go to log.txt.
set -uo pipefail

OUT_DIR=${1:-${OUT:-runs/bench-gpu}}
BUDGET_S=${BENCH_BUDGET_S:-480}
PY=${PYTHON:-python3}
DEVICE=${BENCH_DEVICE:-cuda}
START=$(date +%s)
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/log.txt"
: >"$LOG"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled

say() { echo "[gpu.sh $(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
left() { echo $((START + BUDGET_S - $(date +%s))); }

# --- 1. carried wheels -------------------------------------------------------------------
NO_INSTALL=${BENCH_NO_INSTALL:-0}
WHEEL_DIR=""
for d in ${WHEELS:-} .whl shared/wheels; do
    if [ -n "$d" ] && compgen -G "$d/*.whl" >/dev/null; then WHEEL_DIR=$d; break; fi
done
if [ "$NO_INSTALL" = 1 ]; then
    say "BENCH_NO_INSTALL=1: installing nothing"
elif [ -n "$WHEEL_DIR" ]; then
    say "installing wheels from $WHEEL_DIR: $(cd "$WHEEL_DIR" && ls *.whl | tr '\n' ' ')"
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/bench-site "$WHEEL_DIR"/*.whl >>"$LOG" 2>&1; then
        say "ERROR: pip could not install the wheels (see $LOG)"; exit 1
    fi
    export PYTHONPATH="/tmp/bench-site${PYTHONPATH:+:$PYTHONPATH}"
else
    say "no wheel folder (\$WHEELS, .whl, shared/wheels): using what the image has"
fi
if ! "$PY" -c "import polars, omegaconf" 2>>"$LOG"; then
    say "ERROR: polars / omegaconf missing: carry their wheels (benchmarks/README.md)"; exit 1
fi

# --- 2. the package ----------------------------------------------------------------------
if [ "$NO_INSTALL" = 1 ]; then
    :
elif "$PY" -m pip install -q --no-deps --no-index --no-build-isolation -e . >>"$LOG" 2>&1; then
    say "installed intentrec (editable, no deps)"
else
    say "pip install -e . failed offline; running from the checkout (PYTHONPATH)"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L 2>&1 | tee -a "$LOG" >&2 || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" \
    2>&1 | tee -a "$LOG" >&2

# --- 3. sections, each with its own time limit --------------------------------------------
rm -f "$OUT_DIR/results.jsonl" "$OUT_DIR/notes.txt"
QUICK=()
[ "${BENCH_QUICK:-0}" = 1 ] && QUICK=(--quick)
STATUS=0
# section:planned seconds (the last ones get what is left, less a reserve for the summary)
for plan in mfu:200 train:100 eval:60 loss:40 data:0 quality:30; do
    section=${plan%%:*}
    planned=${plan##*:}
    remaining=$(( $(left) - 15 ))
    limit=$planned
    if [ "$limit" = 0 ] || [ "$limit" -gt "$remaining" ]; then limit=$remaining; fi
    if [ "$limit" -lt 10 ]; then say "$section: skipped (time budget spent)"; continue; fi
    extra=()
    [ "$section" = data ] && [ -n "${SIZES:-}" ] && extra=(--sizes "$SIZES")
    [ "$section" = quality ] && extra=(--runs "${BENCH_RUNS:-runs}")
    say "$section: up to ${limit}s"
    timeout --signal=TERM --kill-after=10 "$limit" \
        "$PY" -m benchmarks.run --device "$DEVICE" --only "$section" --out "$OUT_DIR" --append \
        --no-table "${QUICK[@]}" "${extra[@]}" >>"$LOG" 2>&1
    rc=$?
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        say "$section: stopped at its ${limit}s limit (figures measured so far are kept)"
        STATUS=1
    elif [ "$rc" != 0 ]; then
        say "$section: exit status $rc (see $LOG)"
        STATUS=1
    fi
done
"$PY" -m benchmarks.run --device "$DEVICE" --out "$OUT_DIR" --summary "${QUICK[@]}" 2>>"$LOG"
say "done in $(( $(date +%s) - START ))s; results in $OUT_DIR/results.jsonl and results.md"
exit $STATUS
