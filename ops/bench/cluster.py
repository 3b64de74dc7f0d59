"""Helpers for the benchmarks in this folder: a 3-node midasflow cluster on 127.0.0.1
started from a binary, its /metrics, and the CPU and memory of its processes. Standard
library only. Every process started is stopped by PID; the data dirs are deleted.
"""
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")


def call(port, method, path, body=None, timeout=10.0):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as e:
        return -1, str(e).encode()
    finally:
        conn.close()


def metric_sums(port):
    """Sums every sample of each metric name on one node's /metrics."""
    status, body = call(port, "GET", "/metrics")
    sums = {}
    if status != 200:
        return sums
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{")[0].split(" ")[0]
        try:
            sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        except ValueError:
            pass
    return sums


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0



class Cluster:
    """Three `midasflow server` processes on free ports, with `--initial-shards shards`."""

    def __init__(self, binary, shards, extra=()):
        self.binary, self.shards, self.extra = binary, shards, list(extra)
        self.root = tempfile.mkdtemp(prefix="midasflow-bench-")
        self.ports = {n: free_port() for n in (1, 2, 3)}
        self.initial = ",".join(f"{n}={HOST}:{p}" for n, p in self.ports.items())
        self.procs = {}

    def start(self):
        for n, port in self.ports.items():
            log = open(os.path.join(self.root, f"node{n}.log"), "a")
            cmd = [self.binary, "server", "--insecure", "--node-id", str(n), "--listen", f"{HOST}:{port}",
                   "--data-dir", os.path.join(self.root, f"d{n}"), "--initial-cluster", self.initial,
                   "--initial-shards", str(self.shards)] + self.extra
            self.procs[n] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            log.close()

    def wait_all_leaders(self, timeout=600, on_sample=None):
        """Polls every node's /metrics until every group has a leader; `on_sample` sees
        each poll's sums by node."""
        groups = self.shards + 1
        deadline = time.time() + timeout
        started, reported = time.time(), time.time()
        while True:
            sums = {n: metric_sums(p) for n, p in self.ports.items()}
            if on_sample:
                on_sample(sums)
            leaders = sum(s.get("midasflow_raft_leaders", 0) for s in sums.values())
            if leaders >= groups:
                return
            if time.time() - reported >= 10:
                reported = time.time()
                print(f"{leaders} of {groups} groups led after {reported - started:.0f} s", file=sys.stderr)
            if time.time() > deadline:
                raise SystemExit(f"only {leaders} of {groups} groups have a leader after {timeout} s")
            time.sleep(0.5)

    def endpoints(self):
        return ",".join(f"{HOST}:{p}" for p in self.ports.values())

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def remove(self):
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def split_extra(argv):
    """(own arguments, server flags after `--`)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []
