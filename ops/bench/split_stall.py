#!/usr/bin/env python3
"""How long a split holds up the writes (or reads) of the range it moves.

Each round starts two fresh 3-node clusters on 127.0.0.1 in turn, with the scheduler's
automatic splits off, waits until every group has a leader, and runs `midasflow bench`
(durable writes routed to leaders) against each. In the second cluster of a round,
`--splits` shards are split by hand (`POST /v1/shards/{id}/split`) `--split-at-secs`
into the run. The tail latencies of the two runs differ by what the splits cost: a write
to the moved range waits until the new shard has a leader and the map names it. Server
flags go after `--`: `-- --schedule-paused` leaves out the leadership transfers the
scheduler makes to balance leaders after a split.

`--workload read --routing any` measures linearizable reads instead (the bench preloads
`--keys` keys first; the splits come `--split-at-secs` into the timed run).

Usage: split_stall.py BINARY [--rounds 2] [--duration-secs 20] [--split-at-secs 7]
                      [--splits 2] [--connections 64] [--workload write|read|stale]
                      [--routing leader|any] [--out FILE] [--keep-logs DIR]
                      [-- extra server flags]

`--keep-logs DIR` copies each run's node logs to DIR/round-R-splits-S/ before the
cluster is removed (a split's leader logs how long its scan, write and flush took).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

from cluster import Cluster, call, split_extra

NO_AUTOMATIC_SPLITS = ["--split-qps", "1000000000", "--split-max-keys", "1000000000"]


def one_run(args, extra, splits, round_no):
    cluster = Cluster(args.binary, args.shards, NO_AUTOMATIC_SPLITS + extra)
    bench = None
    try:
        cluster.start()
        cluster.wait_all_leaders()
        out = os.path.join(cluster.root, "bench.json")
        bench = subprocess.Popen([
            args.binary, "bench", "--endpoints", cluster.endpoints(), "--connections", str(args.connections),
            "--duration-secs", str(args.duration_secs), "--keys", str(args.keys), "--out", out,
            "--workload", args.workload, "--routing", args.routing,
        ], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # The timed run starts once a read workload's preload is done.
        timed_run = threading.Event()
        if args.workload == "write":
            timed_run.set()

        def drain(stream):
            for line in stream:
                if line.startswith("preloaded"):
                    timed_run.set()
                elif "ops/s" not in line:  # the bench's per-second progress is left out
                    sys.stderr.write(line)
            timed_run.set()

        threading.Thread(target=drain, args=(bench.stderr,), daemon=True).start()
        timed_run.wait()
        asked = []
        if splits:
            time.sleep(args.split_at_secs)
            port = next(iter(cluster.ports.values()))
            for shard in range(1, splits + 1):
                status, body = call(port, "POST", f"/v1/shards/{shard}/split", body=b"{}")
                asked.append({"shard": shard, "status": status, "answer": body.decode(errors="replace")})
        if bench.wait() != 0:
            raise SystemExit("midasflow bench failed")
        with open(out) as f:
            result = json.load(f)
        return {
            "splits": splits,
            "asked": asked,
            "ops_per_second": round(result["throughput_ops_per_second"]),
            "errors": result["errors"],
            "latency_ms": result["latency_ms"],
        }
    finally:
        if bench is not None and bench.poll() is None:
            bench.kill()
            bench.wait()
        cluster.stop()
        if args.keep_logs:
            kept = os.path.join(args.keep_logs, f"round-{round_no}-splits-{splits}")
            os.makedirs(kept, exist_ok=True)
            for name in os.listdir(cluster.root):
                if name.endswith(".log"):
                    shutil.copy(os.path.join(cluster.root, name), kept)
        cluster.remove()


def main():
    own, extra = split_extra(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binary")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration-secs", type=int, default=20)
    parser.add_argument("--split-at-secs", type=float, default=7.0)
    parser.add_argument("--splits", type=int, default=2)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--keys", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workload", choices=["write", "read", "stale"], default="write")
    parser.add_argument("--routing", choices=["leader", "any"], default="leader")
    parser.add_argument("--out")
    parser.add_argument("--keep-logs")
    args = parser.parse_args(own)
    if not 1 <= args.splits <= args.shards:
        raise SystemExit("--splits must be between 1 and --shards")
    if args.split_at_secs >= args.duration_secs:
        raise SystemExit("--split-at-secs must come before the end of the run")
    runs = []
    for round_no in range(1, args.rounds + 1):
        for splits in (0, args.splits):
            run = one_run(args, extra, splits, round_no)
            run["round"] = round_no
            runs.append(run)
            lat = run["latency_ms"]
            print(f"round {round_no}, {splits} splits: {run['ops_per_second']} ops/s, errors {run['errors']}, "
                  f"p50 {lat['p50']:.1f} / p99 {lat['p99']:.1f} / p99.9 {lat['p999']:.1f} / max {lat['max']:.1f} ms",
                  flush=True)
            for asked in run["asked"]:
                if not 200 <= asked["status"] < 300:
                    print(f"  split of shard {asked['shard']} refused: {asked['status']} {asked['answer']}")
    if args.out:
        with open(args.out, "w") as f:
            settings = {k: getattr(args, k) for k in ("workload", "routing", "keys", "shards", "connections",
                                                      "duration_secs", "split_at_secs", "splits")}
            json.dump({"settings": settings, "server_flags": extra, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
