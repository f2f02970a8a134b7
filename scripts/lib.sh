# Shared by scripts/bench, scripts/instructions, scripts/allocs and scripts/flamegraph
# (sourced, not run): the build to measure, a work directory whose processes are stopped on
# exit, waiting for a server's "serving" line, and the processes those measurements start
# (the OTLP sink, the full stack, a bench target). Each function documents what it sets.

# The gRPC load generator's flags, ${generator[@]}: `jisu bench --frames` (HTTP/2 frames written
# by the generator itself, the same bytes as h2's client) unless JISU_BENCH_CLIENT=lean
# (`--lean`: h2's client, no client stack; for a JISU_BENCH_BIN older than --frames) or
# jisu (through the Jisu client).
case ${JISU_BENCH_CLIENT:-frames} in
  lean) generator=(--lean) ;;
  frames) generator=(--frames) ;;
  jisu) generator=() ;;
  *) echo "JISU_BENCH_CLIENT=$JISU_BENCH_CLIENT: expected lean, frames or jisu" >&2; exit 1 ;;
esac

# measured_bin: sets $bin, the server build to measure: JISU_BENCH_BIN when given, else this
# tree's `--profile production` (fat LTO; what deploy/Dockerfile ships), built here.
# (scripts/allocs builds its own: allocation counts do not depend on LTO.)
measured_bin() {
  if [ -z "${JISU_BENCH_BIN:-}" ]; then
    cargo build --profile production --locked -q
  fi
  bin=${JISU_BENCH_BIN:-$PWD/target/production/jisu}
}

work=$(mktemp -d)
pids=()
# Commands run on exit before the work directory goes (e.g. keeping result files).
on_exit=()
lib_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for c in "${on_exit[@]}"; do eval "$c" || true; done
  rm -rf "$work"
}
trap lib_cleanup EXIT

# wait_line FILE PREFIX [SECONDS]: prints what follows PREFIX (a sed pattern) on the first
# line of FILE that starts with it, once there is one; fails after SECONDS (default 30).
wait_line() {
  local tries=$((${3:-30} * 10))
  for _ in $(seq 1 "$tries"); do
    local v
    v=$(sed -n "s/^$2//p" "$1" | head -1)
    [ -n "$v" ] && { echo "$v"; return 0; }
    sleep 0.1
  done
  echo "no '$2' in $1 after ${3:-30} s:" >&2
  # What the process said (its stdout, and its stderr under either name the scripts use).
  cat "$1" "$1.err" "${1%.out}.err" >&2 2>/dev/null
  exit 1
}

# start_sink BIN [PREFIX...]: certificates in $work/certs and the OTLP sink (run under
# PREFIX, e.g. taskset); sets $sink (host:port).
start_sink() {
  local bin=$1
  shift
  "$bin" certs init --dir "$work/certs" >/dev/null
  "$@" "$bin" bench-target otlp-sink --threads 1 >"$work/sink.out" 2>&1 &
  pids+=($!)
  sink=$(wait_line "$work/sink.out" "jisu: serving OtlpSink on ")
}

# start_full NAME RATIO SECONDS BIN [PREFIX...]: `jisu serve`, one worker, in-memory store,
# parent-based sampling at RATIO exporting to $sink, run under PREFIX (taskset, valgrind,
# env for extra variables); waits up to SECONDS for it; sets $server (pid) and $port.
start_full() {
  local name=$1 ratio=$2 secs=$3 bin=$4
  shift 4
  # Any free port for the debug pages (their default is fixed); builds older than them
  # (a JISU_BENCH_BIN to compare) lack the flag.
  local debug=()
  "$bin" serve --help | grep -q -- --debug-listen && debug=(--debug-listen 127.0.0.1:0)
  TOKIO_WORKER_THREADS=1 OTEL_EXPORTER_OTLP_ENDPOINT="http://$sink" \
    OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG="$ratio" RUST_LOG=warn \
    "$@" "$bin" serve --demo-data --certs "$work/certs" --data-dir "$work/data-$name" \
    --database-url memory: --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 "${debug[@]}" \
    >"$work/$name.out" 2>"$work/$name.err" &
  server=$!
  pids+=($server)
  port=$(wait_line "$work/$name.out" "jisu: serving gRPC on 127.0.0.1:" "$secs")
}

# start_target NAME TARGET SECONDS BIN [PREFIX...]: `jisu bench-target TARGET` (one thread,
# the certificates in $work/certs), run under PREFIX; sets $server (pid) and $port.
start_target() {
  local name=$1 target=$2 secs=$3 bin=$4
  shift 4
  "$@" "$bin" bench-target "$target" --threads 1 --certs "$work/certs" \
    >"$work/$name.out" 2>"$work/$name.err" &
  server=$!
  pids+=($server)
  port=$(wait_line "$work/$name.out" "jisu: serving [A-Za-z]* on \(127.0.0.1:\)\{0,1\}" "$secs")
}
