#!/usr/bin/env bash
# midasflow against etcd, same box, same client, same load.
#
# Starts a 3-member etcd cluster and a 3-node midasflow cluster (default flags) on
# 127.0.0.1, preloads the same N keys (16-byte keys, 128-byte values) into both, then
# drives each through ONE client endpoint (etcd: its leader; midasflow: node 1, which
# forwards to each shard's leader) with wrk and the Lua scripts in lua/:
#   put-c1      durable put, 1 connection (wrk -t1: wrk needs connections >= threads)
#   put-c64     durable put, 64 connections
#   get-c64     linearizable get, 64 connections (etcd: range, serializable=false)
#   stale-c64   stale get, 64 connections (etcd: range, serializable=true;
#               midasflow: ?consistency=stale)
# Keys are uniformly random over the preloaded space. Each point runs --repeats times
# for --duration-secs, etcd and midasflow alternating. Then nginx answering a fixed
# 128-byte body, driven by the same wrk at 64 connections: the box's HTTP ceiling.
#
# Reported per point: ops/s (successful responses per second, the median over repeats),
# p50 and p99 latency (medians over repeats), midasflow/etcd ratio, and errors (responses
# with status >= 400, which is what wrk counts, plus socket errors and timeouts, summed
# over repeats): a point with errors is flagged and its failed responses are not counted
# as throughput. For midasflow the non-200 KV responses its /metrics counted and its
# leader changes are reported too. Per run also: /proc/loadavg before and after, busy
# cores (/proc/stat), the cores the driven servers used (/proc/PID/stat), the cores wrk
# used (this shell's reaped children), and the rest ("other": the idle cluster and
# whatever else runs on the machine).
#
# Missing tools are installed with apt-get (etcd-server, etcd-client, wrk, nginx-light).
# Every process started is stopped by PID on exit (also on Ctrl-C); temp dirs are removed.
#
# Usage: compare-etcd.sh BINARY [--duration-secs 15] [--repeats 2] [--keys 100000]
#                        [--out FILE] [--keep-logs DIR] [--install-only]
# --out writes the raw results (every run, the machine, versions) as JSON.
# --keep-logs copies the servers' logs to DIR before the temp dir goes (a split's timings,
# leader changes and their reasons are in midasflow's).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit "${1:-0}"; }

[[ $# -ge 1 ]] || usage 2
case "$1" in -h|--help) usage 0 ;; esac
BINARY=$1; shift
DURATION=15 REPEATS=2 KEYS=100000 OUT="" KEEP_LOGS="" INSTALL_ONLY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration-secs) DURATION=$2; shift 2 ;;
    --repeats) REPEATS=$2; shift 2 ;;
    --keys) KEYS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --keep-logs) KEEP_LOGS=$(realpath -m "$2"); shift 2 ;;
    --install-only) INSTALL_ONLY=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done
[[ $KEYS -ge 64 ]] || { echo "--keys must be at least 64" >&2; exit 2; }
[[ -n $OUT ]] && OUT=$(realpath -m "$OUT")

HERE=$(cd "$(dirname "$0")" && pwd)
LUA=$HERE/lua
HOST=127.0.0.1
THREADS=2
export PATH=$PATH:/usr/sbin:/sbin

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- dependencies
install_deps() {
  local need=() sudo=""
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v etcdctl >/dev/null || need+=(etcd-client)
  command -v wrk >/dev/null || need+=(wrk)
  command -v nginx >/dev/null || need+=(nginx-light)
  command -v python3 >/dev/null || need+=(python3)
  command -v curl >/dev/null || need+=(curl)
  if [[ ${#need[@]} -gt 0 ]]; then
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    log "installing with apt-get: ${need[*]}"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
    for p in "${need[@]}"; do
      log "installed: $(dpkg-query -W -f='${Package} ${Version}' "$p")"
    done
  else
    log "etcd, etcdctl, wrk, nginx, python3, curl: already present"
  fi
}
install_deps
[[ $INSTALL_ONLY -eq 1 ]] && exit 0
[[ -x $BINARY ]] || { echo "not an executable: $BINARY" >&2; exit 2; }
BINARY=$(realpath "$BINARY")

# ---------------------------------------------------------------- processes and cleanup
TMP=$(mktemp -d /tmp/compare-etcd.XXXXXX)
declare -a SERVER_PIDS=()   # long-running children: etcd, midasflow, nginx
WRK_PID=""                  # the wrk run in progress, if any

stop_pid() {  # only our own child (a reaped PID may have been reused)
  local pid=$1 i
  [[ $(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ') == "$$" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    [[ $(ps -o stat= -p "$pid" 2>/dev/null) == Z* ]] && return 0
    sleep 0.1
  done
  log "pid $pid did not stop in 30 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n $WRK_PID ]] && stop_pid "$WRK_PID"
  local pid
  for pid in "${SERVER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${SERVER_PIDS[@]}"; do stop_pid "$pid"; done
  wait 2>/dev/null || true
  if [[ $rc -ne 0 && $rc -ne 130 && $rc -ne 143 && -d $TMP ]]; then
    log "failed (exit $rc); last lines of the server logs:"
    for f in "$TMP"/*.log; do [[ -f $f ]] && { echo "== $f" >&2; tail -n 5 "$f" >&2; }; done
  fi
  if [[ -n $KEEP_LOGS && -d $TMP ]]; then
    mkdir -p "$KEEP_LOGS" && cp "$TMP"/*.log "$KEEP_LOGS"/ 2>/dev/null || true
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 10 distinct free ports: etcd client x3, etcd peer x3, midasflow x3, nginx.
read -r -a PORTS < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(10)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
EC=("${PORTS[@]:0:3}") EP=("${PORTS[@]:3:3}") MP=("${PORTS[@]:6:3}") NGINX_PORT=${PORTS[9]}

# ---------------------------------------------------------------- etcd
ETCD_INITIAL=""
for i in 0 1 2; do ETCD_INITIAL+="${ETCD_INITIAL:+,}e$((i + 1))=http://$HOST:${EP[$i]}"; done
ETCD_ENDPOINTS=$(printf "$HOST:%s," "${EC[@]}"); ETCD_ENDPOINTS=${ETCD_ENDPOINTS%,}
declare -a ETCD_PIDS=()
for i in 0 1 2; do
  n=$((i + 1))
  etcd --name "e$n" --data-dir "$TMP/etcd$n" \
    --listen-client-urls "http://$HOST:${EC[$i]}" --advertise-client-urls "http://$HOST:${EC[$i]}" \
    --listen-peer-urls "http://$HOST:${EP[$i]}" --initial-advertise-peer-urls "http://$HOST:${EP[$i]}" \
    --initial-cluster "$ETCD_INITIAL" --initial-cluster-token compare-etcd --initial-cluster-state new \
    --logger zap --log-outputs stderr >"$TMP/etcd$n.log" 2>&1 &
  ETCD_PIDS+=($!); SERVER_PIDS+=($!)
done

# ---------------------------------------------------------------- midasflow
MF_INITIAL=""
for i in 0 1 2; do MF_INITIAL+="${MF_INITIAL:+,}$((i + 1))=$HOST:${MP[$i]}"; done
declare -a MF_PIDS=()
for i in 0 1 2; do
  n=$((i + 1))
  "$BINARY" server --insecure --node-id "$n" --listen "$HOST:${MP[$i]}" --data-dir "$TMP/mf$n" \
    --initial-cluster "$MF_INITIAL" >"$TMP/midasflow$n.log" 2>&1 &
  MF_PIDS+=($!); SERVER_PIDS+=($!)
done

# ---------------------------------------------------------------- nginx
BODY128=$(printf '0123456789abcdef%.0s' {1..8})
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes auto;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  server {
    listen $HOST:$NGINX_PORT;
    location / { default_type application/octet-stream; return 200 "$BODY128"; }
  }
}
EOF
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx.log" -g 'daemon off;' \
  >>"$TMP/nginx.log" 2>&1 &
NGINX_PID=$!; SERVER_PIDS+=($NGINX_PID)

# ---------------------------------------------------------------- wait until healthy
deadline=$((SECONDS + 120))
until etcdctl --endpoints="$ETCD_ENDPOINTS" endpoint health >/dev/null 2>&1; do
  ((SECONDS < deadline)) || { log "etcd not healthy after 120 s"; exit 1; }
  sleep 0.5
done
log "etcd healthy: $ETCD_ENDPOINTS"

mf_healthy() {
  local p
  for p in "${MP[@]}"; do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$HOST:$p/readyz") == 200 ]] || return 1
    curl -s "http://$HOST:$p/health" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin).get("healthy") is True else 1)' || return 1
  done
}
until mf_healthy 2>/dev/null; do
  ((SECONDS < deadline)) || { log "midasflow not healthy after 120 s"; exit 1; }
  sleep 0.5
done
log "midasflow healthy: ports ${MP[*]}"

until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$HOST:$NGINX_PORT/") == 200 ]]; do
  ((SECONDS < deadline)) || { log "nginx not answering"; exit 1; }
  sleep 0.2
done

etcd_leader() {  # the client endpoint (host:port) of the member that is leader
  etcdctl --endpoints="$ETCD_ENDPOINTS" endpoint status -w json | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["Status"]["header"]["member_id"] == e["Status"]["leader"]:
        print(e["Endpoint"])'
}
ETCD_LEADER=$(etcd_leader)
[[ -n $ETCD_LEADER ]] || { log "no etcd leader found"; exit 1; }
ETCD_LEADER_PID=""
for i in 0 1 2; do [[ $ETCD_LEADER == "$HOST:${EC[$i]}" ]] && ETCD_LEADER_PID=${ETCD_PIDS[$i]}; done
MF_NODE="$HOST:${MP[0]}"
log "etcd leader: $ETCD_LEADER; midasflow entry node: node 1 $MF_NODE"

# ---------------------------------------------------------------- measuring helpers
proc_ticks() {  # utime+stime of the given PIDs, in clock ticks
  local sum=0 pid f
  for pid in "$@"; do
    f=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    f=${f##*) }
    read -r -a a <<<"$f"
    sum=$((sum + a[11] + a[12]))
  done
  echo "$sum"
}
cpu_busy_total() {  # "busy total" jiffies from /proc/stat
  read -r _ u n s idle io irq sirq steal _ </proc/stat
  echo "$((u + n + s + irq + sirq + steal)) $((u + n + s + idle + io + irq + sirq + steal))"
}
mf_counters() {  # JSON: leader changes and non-200 KV responses, summed over the 3 nodes
  python3 - "${MP[@]}" <<'EOF'
import json, sys, urllib.request
out = {"leader_changes": 0, "kv_non200": {}}
for port in sys.argv[1:]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        continue
    for line in text.splitlines():
        if line.startswith("midasflow_raft_leader_changes_total"):
            out["leader_changes"] += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("midasflow_http_requests_total{") and 'route="/v1/kv/' in line:
            status = line.split('status="', 1)[1].split('"', 1)[0]
            if status != "200":
                method = line.split('method="', 1)[1].split('"', 1)[0]
                k = f"{method} {status}"
                out["kv_non200"][k] = out["kv_non200"].get(k, 0) + int(float(line.rsplit(" ", 1)[1]))
print(json.dumps(out))
EOF
}
mf_shards() {
  curl -s "http://$MF_NODE/v1/shards" | python3 -c '
import json, sys
d = json.load(sys.stdin)
s = d["shards"] if isinstance(d, dict) and "shards" in d else d
print(len(s))' 2>/dev/null || echo "?"
}

# Runs wrk in the background (so Ctrl-C and the EXIT trap can stop it by PID) and waits.
run_wrk() {  # out-file wrk-args...
  local out=$1 rc=0; shift
  wrk "$@" >"$out" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || rc=$?
  WRK_PID=""
  return "$rc"
}

# ---------------------------------------------------------------- preload
etcd_count() {
  etcdctl --endpoints="$ETCD_LEADER" get k --prefix --limit 1 -w json |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("count", 0))' 2>/dev/null || echo 0
}
mf_count() {  # live keys in node 1's replicas (it holds a replica of every shard)
  curl -s "http://$MF_NODE/v1/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["node"]["keys"])' 2>/dev/null || echo 0
}
preload_walk() {  # system mode url attempt: one pass of wrk over the whole key space
  local system=$1 mode=$2 url=$3 attempt=$4 t0 rc=0 last="" same=0 progress
  local done_dir="$TMP/preload-$system-$attempt" out="$TMP/preload-$system-$attempt.out"
  mkdir -p "$done_dir"
  t0=$(date +%s.%N)
  BENCH_MODE=$mode BENCH_KEYS=$KEYS BENCH_THREADS=$THREADS BENCH_DONE_DIR=$done_dir \
    wrk -t"$THREADS" -c64 -d"$((600 + KEYS / 100))"s --timeout 10s -s "$LUA/preload.lua" "$url" >"$out" 2>&1 &
  WRK_PID=$!
  while kill -0 "$WRK_PID" 2>/dev/null; do
    sleep 0.2
    [[ $(find "$done_dir" -name 'done.*' | wc -l) -ge $THREADS ]] && break
    progress=$(cat "$done_dir"/progress.* 2>/dev/null | tr "\n" " " || true)
    if [[ $progress == "$last" ]]; then
      # no thread passed another 1000 responses in 10 s: a request was lost (socket error)
      ((++same >= 50)) && { log "preload of $system: stalled, stopping this pass"; break; }
    else
      last=$progress same=0
    fi
  done
  kill -INT "$WRK_PID" 2>/dev/null || true  # wrk's main thread sleeps for -d; this wakes it
  wait "$WRK_PID" || rc=$?
  WRK_PID=""
  local secs json
  secs=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
  json=$(sed -n 's/^WRKJSON //p' "$out")
  [[ -n $json ]] || { log "preload of $system: no result (wrk exit $rc)"; cat "$out" >&2; exit 1; }
  echo "{\"system\":\"$system\",\"attempt\":$attempt,\"seconds\":$secs,\"wrk\":$json}" >>"$TMP/preload.jsonl"
  log "preload of $system, pass $attempt: $secs s, $(echo "$json" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("%d puts answered, %.0f/s, errors %s" % (d["requests"], d["requests"] / (d["duration_us"] / 1e6), d["errors"]))')"
}
preload() {  # system mode url count-function
  local system=$1 mode=$2 url=$3 count_fn=$4 attempt n i
  for attempt in 1 2 3; do
    preload_walk "$system" "$mode" "$url" "$attempt"
    for ((i = 0; i < 50; i++)); do  # a replica may apply the last writes a little later
      n=$($count_fn)
      [[ $n -ge $KEYS ]] && break
      sleep 0.2
    done
    log "$system holds $n keys (expected $KEYS)"
    [[ $n -eq $KEYS ]] && return 0
  done
  log "WARNING: preload of $system incomplete: gets of missing keys will show as errors (midasflow 404) or as empty ranges (etcd 200, not detected)"
}
: >"$TMP/preload.jsonl"
preload etcd etcd-put "http://$ETCD_LEADER" etcd_count
preload midasflow mf-put "http://$MF_NODE" mf_count
MF_SHARDS_BEFORE=$(mf_shards)

# ---------------------------------------------------------------- runs
RUNS=$TMP/runs.jsonl
: >"$RUNS"
run_point() {  # point system mode connections url pids...
  local point=$1 system=$2 mode=$3 conns=$4 url=$5; shift 5
  local threads=$THREADS rep=$CUR_REP out="$TMP/wrk.out" rc=0
  ((conns < threads)) && threads=$conns
  local la0 la1 c0 c1 p0 p1 m0="{}" m1="{}" json
  [[ $system == midasflow ]] && m0=$(mf_counters)
  la0=$(cut -d' ' -f1-4 /proc/loadavg); c0=$(cpu_busy_total); p0=$(proc_ticks "$@")
  times >"$TMP/times0"  # in this shell (not a subshell): its reaped children's CPU time
  BENCH_MODE=$mode BENCH_KEYS=$KEYS run_wrk "$out" -t"$threads" -c"$conns" -d"${DURATION}s" \
    --timeout 10s -s "$LUA/load.lua" "$url" || rc=$?
  times >"$TMP/times1"; la1=$(cut -d' ' -f1-4 /proc/loadavg); c1=$(cpu_busy_total); p1=$(proc_ticks "$@")
  [[ $system == midasflow ]] && m1=$(mf_counters)
  json=$(sed -n 's/^WRKJSON //p' "$out")
  if [[ -z $json ]]; then
    log "$point $system: wrk failed (exit $rc):"; cat "$out" >&2
    json=null
  fi
  python3 - "$point" "$system" "$conns" "$threads" "$rep" "$la0" "$la1" "$c0" "$c1" "$p0" "$p1" \
    "$(getconf CLK_TCK)" "$json" "$m0" "$m1" "$TMP/times0" "$TMP/times1" >>"$RUNS" <<'EOF'
import json, re, sys
(point, system, conns, threads, rep, la0, la1, c0, c1, p0, p1, tck, w, m0, m1, w0, w1) = sys.argv[1:]

def children_seconds(path):  # second line of `times`: children's user and system time
    line = open(path).read().splitlines()[1]
    return sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", line))

b0, t0 = map(int, c0.split()); b1, t1 = map(int, c1.split())
w = json.loads(w)
r = {"point": point, "system": system, "connections": int(conns), "threads": int(threads),
     "repeat": int(rep), "loadavg_before": la0, "loadavg_after": la1, "wrk": w}
if w:
    secs = w["duration_us"] / 1e6
    e = w["errors"]
    r["seconds"] = round(secs, 2)
    r["errors"] = e["status"] + e["connect"] + e["read"] + e["write"] + e["timeout"]
    r["ops_per_s"] = round((w["requests"] - e["status"]) / secs, 1)
    r["p50_ms"] = w["latency_us"]["p50"] / 1000
    r["p99_ms"] = w["latency_us"]["p99"] / 1000
    r["busy_cores"] = round((b1 - b0) / max(t1 - t0, 1) * __import__("os").cpu_count(), 2)
    r["server_cores"] = round((int(p1) - int(p0)) / int(tck) / secs, 2)
    r["client_cores"] = round((children_seconds(w1) - children_seconds(w0)) / secs, 2)
    # busy cores not used by the driven servers or by wrk: the idle cluster and anything
    # else on the machine
    r["other_cores"] = round(max(r["busy_cores"] - r["server_cores"] - r["client_cores"], 0), 2)
m0, m1 = json.loads(m0), json.loads(m1)
if m1:
    r["midasflow_leader_changes"] = m1["leader_changes"] - m0.get("leader_changes", 0)
    r["midasflow_kv_non200"] = {k: v - m0.get("kv_non200", {}).get(k, 0) for k, v in m1["kv_non200"].items()
                                if v - m0.get("kv_non200", {}).get(k, 0)}
print(json.dumps(r))
EOF
  log "$(tail -n 1 "$RUNS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
if r["wrk"] is None:
    print(r["point"], r["system"], "FAILED")
else:
    line = "%-9s %-9s #%d: %9.0f ops/s  p50 %.2f ms  p99 %.2f ms  errors %d  busy %.2f cores (servers %.2f, wrk %.2f, other %.2f)  load %s" % (
        r["point"], r["system"], r["repeat"], r["ops_per_s"], r["p50_ms"], r["p99_ms"], r["errors"],
        r["busy_cores"], r["server_cores"], r["client_cores"], r["other_cores"], r["loadavg_after"])
    if "midasflow_leader_changes" in r:
        line += "  leader changes %d, non-200 %s" % (r["midasflow_leader_changes"], r["midasflow_kv_non200"])
    print(line)')"
}

LOADAVG_START=$(cat /proc/loadavg)
POINTS=("put-c1 1 etcd-put mf-put" "put-c64 64 etcd-put mf-put" "get-c64 64 etcd-get mf-get"
        "stale-c64 64 etcd-serializable mf-stale")
for spec in "${POINTS[@]}"; do
  read -r point conns emode mmode <<<"$spec"
  for ((CUR_REP = 1; CUR_REP <= REPEATS; CUR_REP++)); do
    run_point "$point" etcd "$emode" "$conns" "http://$ETCD_LEADER" "${ETCD_PIDS[@]}"
    run_point "$point" midasflow "$mmode" "$conns" "http://$MF_NODE" "${MF_PIDS[@]}"
  done
done
for ((CUR_REP = 1; CUR_REP <= REPEATS; CUR_REP++)); do
  run_point nginx-c64 nginx nginx 64 "http://$HOST:$NGINX_PORT" "$NGINX_PID" $(pgrep -P "$NGINX_PID" || true)
done
LOADAVG_END=$(cat /proc/loadavg)
ETCD_LEADER_END=$(etcd_leader || true)
MF_SHARDS_AFTER=$(mf_shards)
[[ $ETCD_LEADER_END == "$ETCD_LEADER" ]] || log "WARNING: etcd leader moved during the runs: $ETCD_LEADER -> $ETCD_LEADER_END"
[[ $MF_SHARDS_BEFORE == "$MF_SHARDS_AFTER" ]] || log "midasflow shard count changed during the runs: $MF_SHARDS_BEFORE -> $MF_SHARDS_AFTER (the scheduler split shards)"

# ---------------------------------------------------------------- report
META=$(python3 - <<EOF
import json, os
print(json.dumps({
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "nproc": os.cpu_count(),
  "cpu": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')",
  "kernel": "$(uname -r)",
  "loadavg_start": "$LOADAVG_START", "loadavg_end": "$LOADAVG_END",
  "duration_secs": $DURATION, "repeats": $REPEATS, "keys": $KEYS, "wrk_threads": $THREADS,
  "etcd": "$(etcd --version 2>/dev/null | head -n1)",
  "etcd_leader": "$ETCD_LEADER", "etcd_leader_end": "$ETCD_LEADER_END",
  "wrk": "$(dpkg-query -W -f='${Version}' wrk 2>/dev/null || true)",
  "nginx": "$(nginx -v 2>&1 | cut -d/ -f2)",
  "midasflow_binary": "$BINARY",
  "midasflow_version": "$("$BINARY" --version 2>/dev/null || true)",
  "midasflow_entry_node": 1,
  "midasflow_shards_before": "$MF_SHARDS_BEFORE", "midasflow_shards_after": "$MF_SHARDS_AFTER",
}))
EOF
)
python3 - "$RUNS" "$TMP/preload.jsonl" "$OUT" "$META" <<'EOF'
import json, statistics, sys
runs_path, preload_path, out, meta = sys.argv[1:]
meta = json.loads(meta)
runs = [json.loads(l) for l in open(runs_path) if l.strip()]
preload = [json.loads(l) for l in open(preload_path) if l.strip()]

def agg(point, system):
    rs = [r for r in runs if r["point"] == point and r["system"] == system]
    ok = [r for r in rs if r["wrk"]]
    if not ok:
        return None
    return {"ops": statistics.median(r["ops_per_s"] for r in ok),
            "runs": [r["ops_per_s"] for r in ok],
            "p50": statistics.median(r["p50_ms"] for r in ok),
            "p99": statistics.median(r["p99_ms"] for r in ok),
            "errors": sum(r["errors"] for r in ok) + 10**9 * (len(rs) - len(ok)),
            "load": max(float(r["loadavg_after"].split()[0]) for r in ok),
            "busy": statistics.median(r["busy_cores"] for r in ok),
            "servers": statistics.median(r["server_cores"] for r in ok),
            "client": statistics.median(r["client_cores"] for r in ok),
            "other": statistics.median(r["other_cores"] for r in ok)}

def cell(a):
    if a is None:
        return "FAILED"
    flag = " **ERRORS**" if a["errors"] else ""
    return f"{a['ops']:,.0f} ({a['p50']:.2f} / {a['p99']:.2f} ms){flag}"

def cores(a, k="servers"):
    return "—" if a is None else f"{a[k]:.2f}"

labels = {"put-c1": "durable put, 1 conn", "put-c64": "durable put, 64 conns",
          "get-c64": "linearizable get, 64 conns", "stale-c64": "stale / serializable get, 64 conns"}
lines = [
  f"Machine: {meta['nproc']} cores ({meta['cpu']}), loadavg at start {meta['loadavg_start'].split()[:3]}, at end {meta['loadavg_end'].split()[:3]}; "
  f"{meta['etcd']}, wrk {meta['wrk']}, nginx {meta['nginx']}; {meta['keys']:,} keys, {meta['duration_secs']} s x {meta['repeats']} per point, wrk -t{meta['wrk_threads']} (-t1 at 1 conn).",
  "Cores: CPU used during the runs (medians), from /proc: the driven servers' three processes, wrk, and the rest of the busy time (the idle"
  " other cluster and anything else running on the machine). ops/s counts responses with status < 400 (wrk counts the rest as errors); latencies are wrk's (medians over repeats).",
  "",
  "| point | etcd ops/s (p50 / p99) | midasflow ops/s (p50 / p99) | midasflow / etcd | errors etcd / midasflow | server cores etcd / midasflow | wrk cores | other cores | max 1-min load |",
  "|---|---|---|---|---|---|---|---|---|",
]
for point, label in labels.items():
    e, m = agg(point, "etcd"), agg(point, "midasflow")
    ratio = f"{m['ops'] / e['ops']:.2f}x" if e and m and e["ops"] else "—"
    errs = f"{e['errors'] if e else '—'} / {m['errors'] if m else '—'}"
    load = max([a["load"] for a in (e, m) if a] or [0])
    lines.append(f"| {label} | {cell(e)} | {cell(m)} | {ratio} | {errs} | {cores(e)} / {cores(m)} | {cores(e, 'client')} / {cores(m, 'client')} | {cores(e, 'other')} / {cores(m, 'other')} | {load:.2f} |")
n = agg("nginx-c64", "nginx")
lines.append(f"| nginx, fixed 128 B, 64 conns | {cell(n)} | | | {n['errors'] if n else '—'} | {cores(n)} (nginx) | {cores(n, 'client')} | {cores(n, 'other')} | {n['load'] if n else 0:.2f} |")
if n and n["ops"]:
    e, m = agg("stale-c64", "etcd"), agg("stale-c64", "midasflow")
    lines.append("")
    lines.append(f"Stale / serializable get as % of nginx: etcd {100 * e['ops'] / n['ops']:.0f} %, midasflow {100 * m['ops'] / n['ops']:.0f} %." if e and m else "")
lines.append("")
lines.append("Per-run ops/s: " + "; ".join(
    f"{p} {s}: " + ", ".join(f"{x:,.0f}" for x in (agg(p, s) or {"runs": []})["runs"])
    for p in list(labels) + ["nginx-c64"] for s in ("etcd", "midasflow", "nginx") if agg(p, s)))
mf = [r for r in runs if r["system"] == "midasflow" and r.get("wrk")]
lc = sum(r.get("midasflow_leader_changes", 0) for r in mf)
non200 = {}
for r in mf:
    for k, v in r.get("midasflow_kv_non200", {}).items():
        non200[k] = non200.get(k, 0) + v
lines.append(f"midasflow during the runs: {lc} leader changes, non-200 KV responses {non200 or 'none'}, shards {meta['midasflow_shards_before']} -> {meta['midasflow_shards_after']}; "
             f"etcd leader {meta['etcd_leader']} -> {meta['etcd_leader_end']}.")
lines.append("Preload: " + "; ".join(
    f"{p['system']} pass {p['attempt']} {p['seconds']} s ({p['wrk']['requests'] / (p['wrk']['duration_us'] / 1e6):,.0f} puts/s, "
    f"{sum(p['wrk']['errors'].values())} errors)" for p in preload))
print("\n".join(lines))
if out:
    with open(out, "w") as f:
        json.dump({"meta": meta, "preload": preload, "runs": runs, "table": "\n".join(lines)}, f, indent=1)
    print(f"\nraw results: {out}", file=sys.stderr)
EOF
