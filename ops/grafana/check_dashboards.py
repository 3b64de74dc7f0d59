#!/usr/bin/env python3
"""Checks the Grafana dashboards and the Prometheus rules of ops/ against promtool and a
live node's /metrics. Python 3 standard library only; needs `promtool` on PATH.

    python3 ops/grafana/check_dashboards.py --metrics FILE [--metrics FILE2 ...]

FILE is the text of a live node's GET /metrics (several files are merged). The script:

  dashboards (ops/grafana/dashboards/*.json)
    - every file parses; dashboard uids are present and unique; panel ids (rows and the
      panels nested in rows included) are present and unique within each dashboard;
    - every panel and target uses the datasource uid `prometheus`;
    - every target `expr`, and every template-variable query, has its Grafana variables
      ($node, ${node}, ${node:regex}, [[node]], $__rate_interval, $__interval, $__range,
      ...) replaced by valid PromQL, is written as a recording rule into a temporary rules
      file and checked with `promtool check rules`; an undefined variable is a problem;
  names (dashboards and ops/prometheus/rules/*.yml)
    - every `midasflow_*` metric name used exists in FILE (a histogram's `_bucket`, `_sum`
      and `_count` series count);
    - every recorded series used (a name with a colon) is recorded in the rules;
  alert rules (ops/prometheus/rules/alerts.yml)
    - every alert has a `severity` label and `summary`, `description` and `runbook_url`
      annotations; every runbook_url anchor is a heading of ops/README.md;
    - every alert is tested by ops/prometheus/tests/*.yml both firing and not firing.

Exits 0 when all is well, 1 with the list of problems otherwise.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OPS = os.path.dirname(HERE)

# Grafana's built-in variables, as PromQL that parses. Longest names first.
BUILTINS = [
    ("__rate_interval_ms", "300000"),
    ("__rate_interval", "5m"),
    ("__interval_ms", "60000"),
    ("__interval", "1m"),
    ("__range_ms", "3600000"),
    ("__range_s", "3600"),
    ("__range", "1h"),
    ("__from", "0"),
    ("__to", "0"),
    ("__dashboard", "dashboard"),
    ("__org", "1"),
    ("__user", "user"),
]
VAR_RE = re.compile(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\[\[([A-Za-z0-9_]+)(?::[^\]]*)?\]\]|\$([A-Za-z0-9_]+)")
STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
NAME_RE = re.compile(r"(?<![A-Za-z0-9_:])([A-Za-z_:][A-Za-z0-9_:]*)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, what):
        self.items.append(f"{where}: {what}")


# ---------------------------------------------------------------------------- metrics file
def exported_names(paths, problems):
    """Every series name in the /metrics texts, with the suffixes of histograms/summaries."""
    names = set()
    for path in paths:
        try:
            text = open(path, encoding="utf-8").read()
        except OSError as e:
            problems.add(path, f"cannot read the metrics file: {e}")
            continue
        found = 0
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split()
                if len(parts) >= 4 and parts[1] == "TYPE":
                    name, kind = parts[2], parts[3]
                    if kind in ("histogram", "summary"):
                        names.update(name + s for s in HISTOGRAM_SUFFIXES)
                        if kind == "summary":
                            names.add(name)
                continue
            m = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
            if m:
                names.add(m.group(0))
                found += 1
        if not found:
            problems.add(path, "no samples: is this the text of GET /metrics?")
    # A histogram whose _bucket series is exported also has _sum and _count.
    for name in list(names):
        if name.endswith("_bucket"):
            base = name[: -len("_bucket")]
            names.update(base + s for s in HISTOGRAM_SUFFIXES)
    return names


def names_in_expr(expr):
    """Metric names (tokens starting with midasflow_) and recorded names (with a colon)."""
    bare = STRING_RE.sub('""', expr)
    raw, recorded = set(), set()
    for m in NAME_RE.finditer(bare):
        token = m.group(1)
        if ":" in token:
            if token.strip(":"):
                recorded.add(token)
        elif token.startswith("midasflow_"):
            raw.add(token)
    return raw, recorded


# ---------------------------------------------------------------------------- rules files
def rule_blocks(path):
    """Splits a rules file into its rules: [(kind, name, first_line, text, exprs)]."""
    lines = open(path, encoding="utf-8").read().splitlines()
    starts = [i for i, l in enumerate(lines) if re.match(r"^\s*-\s*(alert|record):", l)]
    blocks = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        body = lines[start:end]
        m = re.match(r"^\s*-\s*(alert|record):\s*(\S+)", body[0])
        blocks.append((m.group(1), m.group(2).strip("\"'"), start + 1, body, exprs_in(body)))
    return blocks


def exprs_in(body):
    """The `expr:` values of a rule's lines (a plain, quoted or block scalar)."""
    exprs = []
    for i, line in enumerate(body):
        m = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(2).strip()
        # The lines indented deeper than `expr:` continue its value (a block scalar, or a
        # plain or quoted scalar folded over several lines).
        more = []
        for line2 in body[i + 1:]:
            if line2.strip() and len(line2) - len(line2.lstrip()) <= indent:
                break
            if line2.strip() and not (value[:1] not in ("|", ">") and line2.strip().startswith("#")):
                more.append(line2.strip())
        if value[:1] in ("|", ">"):
            exprs.append(" ".join(more))
            continue
        value = " ".join([value] + more)
        if value[:1] == '"':
            exprs.append(json.loads(value))
        elif value[:1] == "'":
            exprs.append(value[1:-1].replace("''", "'"))
        else:
            exprs.append(value)
    return exprs


def github_anchors(readme):
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors, seen = set(), {}
    in_code = False
    for line in open(readme, encoding="utf-8").read().splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        m = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def check_alerts(alert_files, readme, test_files, problems):
    anchors = github_anchors(readme) if os.path.exists(readme) else None
    if anchors is None:
        problems.add(readme, "missing: the runbook anchors cannot be checked")
    alerts = {}
    for path in alert_files:
        for kind, name, line, body, _ in rule_blocks(path):
            if kind != "alert":
                continue
            alerts.setdefault(name, f"{os.path.relpath(path)}:{line}")
            text = "\n".join(body)
            where = f"{os.path.relpath(path)}:{line} alert {name}"
            if not name.startswith("Midasflow"):
                problems.add(where, "alert names start with Midasflow")
            if not re.search(r"^\s*severity:\s*[\"']?(critical|warning|info)[\"']?\s*$", text, re.M):
                problems.add(where, "no severity label (critical, warning or info)")
            for annotation in ("summary", "description", "runbook_url"):
                if not re.search(rf"^\s*{annotation}:\s*\S", text, re.M):
                    problems.add(where, f"no {annotation} annotation")
            for url in re.findall(r"runbook_url:\s*[\"']?([^\"'\s]+)", text):
                anchor = url.split("#", 1)[1] if "#" in url else ""
                if not url.startswith("https://github.com/midasflow/midasflow/blob/main/ops/README.md#"):
                    problems.add(where, f"runbook_url {url} does not point into ops/README.md")
                elif anchors is not None and anchor not in anchors:
                    problems.add(where, f"runbook anchor #{anchor} is not a heading of ops/README.md")
    # Unit tests: each alert both firing (exp_alerts with items) and not (exp_alerts: []).
    firing, quiet = set(), set()
    for path in test_files:
        current = None
        for line in open(path, encoding="utf-8").read().splitlines():
            m = re.match(r"^\s*(?:-\s*)?alertname:\s*[\"']?([A-Za-z0-9_]+)", line)
            if m:
                current = m.group(1)
                continue
            m = re.match(r"^\s*exp_alerts:\s*(.*)$", line)
            if m and current:
                (quiet if m.group(1).strip() == "[]" else firing).add(current)
                current = None
    for name, where in sorted(alerts.items()):
        if name not in firing:
            problems.add(where, f"alert {name} has no promtool test where it fires")
        if name not in quiet:
            problems.add(where, f"alert {name} has no promtool test where it does not fire")
    return alerts


# ---------------------------------------------------------------------------- dashboards
def walk_panels(panels):
    for p in panels or []:
        yield p
        yield from walk_panels(p.get("panels"))


def substitute(expr, variables, where, problems):
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        for builtin, value in BUILTINS:
            if name == builtin:
                return value
        if name in variables:
            return variables[name]
        problems.add(where, f"undefined variable ${name}")
        return ".*"

    return VAR_RE.sub(repl, expr)


def variable_query_expr(query):
    """The PromQL in a template variable's query, or None (label_names(), metrics(...))."""
    if isinstance(query, dict):
        query = query.get("query", "")
    query = (query or "").strip()
    m = re.match(r"^label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)$", query, re.S)
    if m:
        return m.group(1).strip()
    if re.match(r"^label_values\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)$", query):
        return None
    m = re.match(r"^query_result\((.*)\)$", query, re.S)
    if m:
        return m.group(1).strip()
    if re.match(r"^(label_names|metrics)\(", query) or not query:
        return None
    return query


def check_dashboards(files, problems):
    """Returns [(where, expr)] of every query, variables replaced."""
    queries, uids = [], {}
    for path in files:
        rel = os.path.relpath(path)
        try:
            dash = json.load(open(path, encoding="utf-8"))
        except (OSError, ValueError) as e:
            problems.add(rel, f"not valid JSON: {e}")
            continue
        uid = dash.get("uid")
        if not uid:
            problems.add(rel, "the dashboard has no uid")
        elif uid in uids:
            problems.add(rel, f"uid {uid!r} is also the uid of {uids[uid]}")
        else:
            uids[uid] = rel
        if not dash.get("title"):
            problems.add(rel, "the dashboard has no title")
        if not isinstance(dash.get("schemaVersion"), int):
            problems.add(rel, "no schemaVersion")

        variables = {}
        for var in dash.get("templating", {}).get("list", []):
            name, kind = var.get("name"), var.get("type")
            if kind == "interval":
                variables[name] = "5m"
            elif kind in ("constant", "textbox") and str(var.get("query", "")).strip():
                variables[name] = str(var.get("query")).strip()
            else:
                variables[name] = ".*"
        for var in dash.get("templating", {}).get("list", []):
            where = f"{rel} variable ${var.get('name')}"
            if var.get("type") != "query":
                continue
            ds = var.get("datasource")
            if isinstance(ds, dict) and ds.get("uid") != "prometheus":
                problems.add(where, f"datasource uid {ds.get('uid')!r}, not 'prometheus'")
            expr = variable_query_expr(var.get("query"))
            if expr:
                queries.append((where, substitute(expr, variables, where, problems)))

        ids = {}
        for panel in walk_panels(dash.get("panels")):
            title = panel.get("title", "")
            pid = panel.get("id")
            where = f"{rel} panel {pid} {title!r}"
            if pid is None:
                problems.add(where, "the panel has no id")
            elif pid in ids:
                problems.add(where, f"panel id {pid} is also the id of panel {ids[pid]!r}")
            else:
                ids[pid] = title
            if panel.get("type") == "row":
                continue
            ds = panel.get("datasource")
            if isinstance(ds, dict) and ds.get("uid") not in ("prometheus", "-- Mixed --"):
                problems.add(where, f"datasource uid {ds.get('uid')!r}, not 'prometheus'")
            targets = panel.get("targets") or []
            if panel.get("type") not in ("text", "news", "dashlist", "alertlist") and not targets:
                problems.add(where, "the panel has no query")
            for target in targets:
                tds = target.get("datasource")
                if isinstance(tds, dict) and tds.get("uid") != "prometheus":
                    problems.add(where, f"target {target.get('refId')}: datasource uid {tds.get('uid')!r}, not 'prometheus'")
                expr = target.get("expr")
                if not expr or not str(expr).strip():
                    problems.add(where, f"target {target.get('refId')} has no expr")
                    continue
                twhere = f"{where} target {target.get('refId')}"
                queries.append((twhere, substitute(expr, variables, twhere, problems)))
    return queries


def promtool_check(queries, promtool, problems):
    """Writes each query as a recording rule and runs `promtool check rules` on the file."""

    def run(items):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "dashboard_queries.yml")
            with open(path, "w", encoding="utf-8") as f:
                f.write("groups:\n  - name: dashboard_queries\n    rules:\n")
                for n, (_, expr) in enumerate(items):
                    f.write(f"      - record: dashboard_query:q{n}\n        expr: {json.dumps(expr)}\n")
            try:
                proc = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
            except OSError as e:
                problems.add("promtool", f"cannot run {promtool}: {e}")
                return None
            return proc.returncode, (proc.stdout + proc.stderr).replace(path, "<queries>")

    result = run(queries)
    if result is None or result[0] == 0:
        return
    # Something failed: check one query at a time to say which.
    for where, expr in queries:
        single = run([(where, expr)])
        if single and single[0] != 0:
            detail = " ".join(l.strip() for l in single[1].splitlines() if "could not parse" in l or "error" in l.lower())
            problems.add(where, f"promtool rejects {expr!r}: {detail or single[1].strip()}")


# ---------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metrics", action="append", required=True, metavar="FILE",
                    help="text of a live node's GET /metrics (repeatable: the names are merged)")
    ap.add_argument("--dashboards", default=os.path.join(HERE, "dashboards"), help="folder of dashboard JSON")
    ap.add_argument("--rules", default=os.path.join(OPS, "prometheus", "rules"), help="folder of Prometheus rules (*.yml)")
    ap.add_argument("--tests", default=os.path.join(OPS, "prometheus", "tests"), help="folder of promtool rule tests (*.yml)")
    ap.add_argument("--readme", default=os.path.join(OPS, "README.md"), help="the runbooks (ops/README.md)")
    ap.add_argument("--promtool", default="promtool", help="promtool binary")
    args = ap.parse_args()

    problems = Problems()
    exported = exported_names(args.metrics, problems)

    dashboard_files = sorted(glob.glob(os.path.join(args.dashboards, "*.json")))
    rule_files = sorted(glob.glob(os.path.join(args.rules, "*.yml")) + glob.glob(os.path.join(args.rules, "*.yaml")))
    test_files = sorted(glob.glob(os.path.join(args.tests, "*.yml")))
    if not dashboard_files:
        problems.add(args.dashboards, "no dashboards (*.json)")
    if not rule_files:
        problems.add(args.rules, "no rule files (*.yml)")

    queries = check_dashboards(dashboard_files, problems)
    promtool_check(queries, args.promtool, problems)

    # What the rules record and use.
    recorded, rule_uses = set(), []
    for path in rule_files:
        for kind, name, line, _, exprs in rule_blocks(path):
            if kind == "record":
                recorded.add(name)
            for expr in exprs:
                rule_uses.append((f"{os.path.relpath(path)}:{line} {kind} {name}", expr))
    alert_files = [p for p in rule_files if any(k == "alert" for k, *_ in rule_blocks(p))]
    alerts = check_alerts(alert_files, args.readme, test_files, problems)

    used = {}
    for where, expr in queries + rule_uses:
        raw, rec = names_in_expr(expr)
        for name in raw:
            if name not in exported:
                used.setdefault(name, []).append(where)
        for name in rec:
            if name not in recorded:
                problems.add(where, f"uses {name}, which no rule in {os.path.relpath(args.rules)} records")
    for name, wheres in sorted(used.items()):
        shown = "; ".join(wheres[:3]) + (f"; and {len(wheres) - 3} more" if len(wheres) > 3 else "")
        problems.add(name, f"not in {', '.join(args.metrics)}, used by {shown}")

    if problems.items:
        print(f"check_dashboards: {len(problems.items)} problem(s):")
        for item in problems.items:
            print(f"  - {item}")
        return 1
    print(f"check_dashboards: OK: {len(dashboard_files)} dashboards, {len(queries)} dashboard queries checked by promtool, "
          f"{len(rule_uses)} rule expressions and {len(alerts)} alerts checked, every midasflow_* name exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
