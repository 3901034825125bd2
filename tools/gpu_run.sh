# Sourced by the GPU check scripts (tools/gpu_checks.sh, tools/gpu_decode_check.sh): the shared set-up and
# the run helper.  Expects OUT (the log folder) to be set; sets PY and status.
mkdir -p "$OUT"
export OODML_QUIET=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
TAIL_LINES=${TAIL_LINES:-12}

run() {  # NAME COMMAND...: run, log to $OUT/NAME.log, time, remember failures in $status
    local name=$1; shift
    echo "== $name: $*"
    local start=$SECONDS
    if "$@" > "$OUT/$name.log" 2>&1; then echo "   ok in $((SECONDS - start)) s"; else echo "   FAILED"; status=1; fi
    tail -n "$TAIL_LINES" "$OUT/$name.log"
}
