#!/usr/bin/env python3
"""Renders the markdown tables of one bench run: `python3 bench/report.py bench/results/<ts>`.

Reads runs.jsonl and meta.json written by bench/harness.py; bench/run.sh prints this at the end
of every run and saves it as tables.md.
"""

import json
import os
import sys

TARGETS = {
    "write_vs_mgmt": 10.0,
    "write_vs_raw": 0.70,
    "write_p99_ms_at_64": 25.0,
    "proxied_vs_nginx": 1.0,
    "cached_vs_nginx": 1.2,
    "rss_mb_1000_conns": 50.0,
}


def load(out):
    runs = []
    with open(os.path.join(out, "runs.jsonl")) as f:
        for line in f:
            if line.strip():
                runs.append(json.loads(line))
    meta = {}
    p = os.path.join(out, "meta.json")
    if os.path.exists(p):
        with open(p) as f:
            meta = json.load(f)
    return runs, meta


def fmt_rate(x):
    if x is None:
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def fmt_ratio(r, pct=False):
    if r is None:
        return "–"
    return f"{100 * r:.0f} %" if pct else f"{r:.2f}×"


def mark(ok):
    return "met" if ok else "**not met**"


def render(out):
    runs, meta = load(out)
    lines = []
    w = lambda s="": lines.append(s)  # noqa: E731

    if meta:
        w(f"Run {meta.get('date')} — {meta.get('nproc')} cores ({meta.get('cpu_model')}), "
          f"{meta.get('mem_gib')} GiB, {meta.get('os')}, kernel {meta.get('kernel')}")
        w(f"{meta.get('gateway')} ({meta.get('git')}), {meta.get('rustc')}; RabbitMQ "
          f"{meta.get('rabbitmq')} (Erlang {meta.get('erlang')}); {meta.get('nginx')}; "
          f"Python/Flask/pika/gunicorn {meta.get('python_flask_pika_gunicorn')}; {meta.get('wrk')}")
        args = meta.get("args", {})
        w(f"{args.get('duration')} s per measured run after {args.get('warmup')} s of warm-up; "
          f"load average at start: {meta.get('loadavg_at_start')}")
        w()

    writes = [r for r in runs if r["section"] == "write"]
    by = {(r["system"], r["conns"]): r for r in writes}
    conns = sorted({r["conns"] for r in writes})
    results = {}
    if writes:
        w("### Write path: HTTP POST → confirmed persistent event (requests/s)")
        w()
        w("| conns | gateway | gateway + JWT | RabbitMQ mgmt HTTP publish | Flask + pika (gunicorn ×4) "
          "| raw lapin, no HTTP (msg/s) | gateway ÷ mgmt | gateway ÷ Flask | gateway ÷ raw |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in conns:
            g = by.get(("gateway", c))
            rate = lambda s: by[(s, c)]["rate"] if (s, c) in by else None  # noqa: E731
            gr = rate("gateway")
            w(f"| {c} | {fmt_rate(gr)} | {fmt_rate(rate('gateway-jwt'))} | "
              f"{fmt_rate(rate('mgmt-http'))} | {fmt_rate(rate('flask-pika'))} | "
              f"{fmt_rate(rate('raw-lapin'))} | {fmt_ratio(ratio(gr, rate('mgmt-http')))} | "
              f"{fmt_ratio(ratio(gr, rate('flask-pika')))} | "
              f"{fmt_ratio(ratio(gr, rate('raw-lapin')), pct=True)} |")
            if g:
                results[c] = (ratio(gr, rate("mgmt-http")), ratio(gr, rate("raw-lapin")),
                              g["p99_ms"])
        w()
        w("Latency p50 / p99 (ms):")
        w()
        w("| conns | gateway | gateway + JWT | mgmt HTTP publish | Flask + pika | raw lapin (confirm) |")
        w("|---:|---:|---:|---:|---:|---:|")
        for c in conns:
            cell = lambda s: (f"{by[(s, c)]['p50_ms']:.2f} / {by[(s, c)]['p99_ms']:.2f}"  # noqa: E731
                              if (s, c) in by else "–")
            w(f"| {c} | {cell('gateway')} | {cell('gateway-jwt')} | {cell('mgmt-http')} | "
              f"{cell('flask-pika')} | {cell('raw-lapin')} |")
        w()
        w("CPU per 1,000 requests (ms of CPU time: the HTTP front's processes / the broker), "
          "load generator (wrk) cores used, and errors:")
        w()
        w("| conns | gateway | gateway + JWT | mgmt HTTP publish (broker only) | Flask + pika "
          "| raw lapin | wrk cores (gateway run) | errors (all systems) |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in conns:
            def cpu(s, front):
                r = by.get((s, c))
                if not r:
                    return "–"
                k = r["cpu_ms_per_1k"]
                if front is None:
                    return f"{k.get('broker', 0):.0f}"
                return f"{k.get(front, 0):.0f} / {k.get('broker', 0):.0f}"
            errs = sum(by[(s, c)]["non_2xx_3xx"] + by[(s, c)]["socket_errors"]
                       for s in ("gateway", "gateway-jwt", "mgmt-http", "flask-pika", "raw-lapin")
                       if (s, c) in by)
            g = by.get(("gateway", c))
            w(f"| {c} | {cpu('gateway', 'gateway')} | {cpu('gateway-jwt', 'gateway')} | "
              f"{cpu('mgmt-http', None)} | {cpu('flask-pika', 'flask')} | "
              f"{cpu('raw-lapin', 'publisher')} | {g['loadgen_cores'] if g else '–'} | {errs} |")
        w()

    cl = {(r["system"], r["label"]): r for r in runs if r["section"] == "cluster"}
    if cl:
        c = next(iter(cl.values()))["conns"]
        w(f"### Cluster: confirmed writes into a 3-node quorum queue vs one node (classic), {c} conns")
        w()
        w("| target | gateway (req/s) | p50 / p99 ms | raw lapin ceiling (msg/s) | gateway ÷ raw "
          "| errors | CPU per 1,000: gateway / all brokers (ms) |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        base = cl.get(("gateway", "1 node, classic queue"))
        for label in ("1 node, classic queue", "3 nodes, quorum queue"):
            g, r = cl.get(("gateway", label)), cl.get(("raw-lapin", label))
            if not g:
                continue
            brokers = sum(v for k, v in g["cpu_ms_per_1k"].items() if k.startswith("broker"))
            w(f"| {label} | {fmt_rate(g['rate'])} | {g['p50_ms']:.2f} / {g['p99_ms']:.2f} | "
              f"{fmt_rate(r['rate'] if r else None)} | "
              f"{fmt_ratio(ratio(g['rate'], r['rate'] if r else None), pct=True)} | "
              f"{g['non_2xx_3xx'] + g['socket_errors']} | "
              f"{g['cpu_ms_per_1k'].get('gateway', 0):.0f} / {brokers:.0f} |")
        q = cl.get(("gateway", "3 nodes, quorum queue"))
        if base and q:
            w()
            w(f"3-node quorum ÷ 1-node classic (gateway): {fmt_ratio(ratio(q['rate'], base['rate']))}"
              " — every node of the cluster shares the same 2 cores with the gateway and wrk.")
        w()

    reads = [r for r in runs if r["section"] == "read"]
    read_ratios = {}
    if reads:
        rb = {(r["system"], r["label"]): r for r in reads}
        labels = []
        for r in reads:
            if r["label"] not in labels:
                labels.append(r["label"])
        c = reads[0]["conns"]
        w(f"### Read path: gateway vs nginx ({c} keep-alive connections, 2 workers each)")
        w()
        w("Client profiles (`Accept-Encoding`): none; okhttp `gzip`; ios `gzip, deflate, br`; "
          "browser `gzip, deflate, br, zstd`. **nginx** compresses like the gateway does per "
          "response (gzip and br at level 1, Debian's brotli module; no zstd module exists "
          "there); **nginx defaults** has nginx's own compression settings (off). Bytes are "
          "per response as sent, with the coding each chose.")
        w()
        w("| test | profile | payload | bytes (coding) gateway / nginx / nginx defaults "
          "| gateway req/s | nginx req/s | nginx defaults req/s | gateway ÷ nginx "
          "| gateway ÷ nginx defaults | p99 ms gateway / nginx | CPU ms / 1k req gateway / nginx |")
        w("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        sizes = {"user": "~2.4 KB", "big": "~110 KB"}
        coding = lambda r: {"identity": "id"}.get(r["content_encoding"], r["content_encoding"])  # noqa: E731
        for label in labels:
            g, n = rb.get(("gateway", label)), rb.get(("nginx", label))
            d = rb.get(("nginx-default", label))
            if not g or not n:
                continue
            rr = ratio(g["rate"], n["rate"])
            rd = ratio(g["rate"], d["rate"]) if d else None
            read_ratios[label] = (g["test"], rr)
            dbytes = f"{d['body_bytes']:,} ({coding(d)})" if d else "–"
            w(f"| {g['test']} | {g.get('profile', '')} | {sizes.get(g['payload'], g['payload'])} | "
              f"{g['body_bytes']:,} ({coding(g)}) / {n['body_bytes']:,} ({coding(n)}) / {dbytes} | "
              f"{fmt_rate(g['rate'])} | {fmt_rate(n['rate'])} | "
              f"{fmt_rate(d['rate']) if d else '–'} | {fmt_ratio(rr)} | {fmt_ratio(rd)} | "
              f"{g['p99_ms']:.2f} / {n['p99_ms']:.2f} | "
              f"{g['cpu_ms_per_1k'].get('gateway', 0):.0f} / "
              f"{n['cpu_ms_per_1k'].get('nginx', 0):.0f} |")
        errs = sum(r["non_2xx_3xx"] + r["socket_errors"] for r in reads)
        wrk_cores = max(r["loadgen_cores"] for r in reads)
        w()
        w(f"Errors (non-2xx/3xx or socket) in all read runs: {errs}. wrk used up to "
          f"{wrk_cores} cores of the 2.")
        w()

    res = [r for r in runs if r["section"] == "resources"]
    rss = {}
    if res:
        w("### Resources")
        w()
        idle_start = next((r["idle_rss_kb"] for r in res if r["label"] == "idle rss at start"), {})
        idle_after = next((r["idle_rss_kb"] for r in res if r["label"] == "idle rss"), {})
        conns1k = {r["system"]: r for r in res if r["label"] == "1000 keep-alive conns"}
        w("| | gateway | nginx (master + 2 workers) |")
        w("|---|---:|---:|")
        mb = lambda kb: f"{kb / 1024:.1f} MB" if kb else "–"  # noqa: E731
        w(f"| RSS idle, after start-up | {mb(idle_start.get('gateway'))} | "
          f"{mb(idle_start.get('nginx'))} |")
        w(f"| RSS idle, after all runs | {mb(idle_after.get('gateway'))} | "
          f"{mb(idle_after.get('nginx'))} |")
        g1k, n1k = conns1k.get("gateway"), conns1k.get("nginx")
        if g1k and n1k:
            rss["gateway"] = g1k["max_rss_kb"]["gateway"] / 1024
            w(f"| RSS max, 1,000 keep-alive connections on the cached route | "
              f"{mb(g1k['max_rss_kb']['gateway'])} | {mb(n1k['max_rss_kb']['nginx'])} |")
            w(f"| req/s with 1,000 connections (p99 ms) | {fmt_rate(g1k['rate'])} "
              f"({g1k['p99_ms']:.1f}) | {fmt_rate(n1k['rate'])} ({n1k['p99_ms']:.1f}) |")
        wmax = max((r["max_rss_kb"].get("gateway", 0) for r in writes), default=0)
        if wmax:
            w(f"| RSS max during the write runs (up to {max(conns)} connections) | {mb(wmax)} | – |")
        for label, name in [("cached none user", "cached 2.4 KB"),
                            ("proxied okhttp user", "proxied+gzip 2.4 KB"),
                            ("304 browser user", "304")]:
            g = next((r for r in reads if r["system"] == "gateway" and r["label"] == label), None)
            n = next((r for r in reads if r["system"] == "nginx" and r["label"] == label), None)
            if g and n:
                w(f"| CPU per 1,000 requests, {name} | {g['cpu_ms_per_1k']['gateway']:.0f} ms | "
                  f"{n['cpu_ms_per_1k']['nginx']:.0f} ms |")
        g = by.get(("gateway", 64)) if writes else None
        if g:
            w(f"| CPU per 1,000 writes at 64 connections (gateway / broker) | "
              f"{g['cpu_ms_per_1k']['gateway']:.0f} ms / {g['cpu_ms_per_1k']['broker']:.0f} ms | – |")
        w()

    # Targets.
    w("### Targets")
    w()
    w("| target | measured | |")
    w("|---|---|---|")
    if 64 in results:
        vm, vr, p99 = results[64]
        if vm is not None:
            w(f"| writes ≥ {TARGETS['write_vs_mgmt']:.0f}× mgmt HTTP publish (64 conns) | "
              f"{fmt_ratio(vm)} (all: {', '.join(fmt_ratio(results[c][0]) for c in conns if c in results)}) | "
              f"{mark(vm >= TARGETS['write_vs_mgmt'])} |")
        if vr is not None:
            w(f"| writes ≥ 70 % of raw confirmed publish (64 conns) | {fmt_ratio(vr, True)} "
              f"(all: {', '.join(fmt_ratio(results[c][1], True) for c in conns if c in results)}) | "
              f"{mark(vr >= TARGETS['write_vs_raw'])} |")
        w(f"| write p99 ≤ 25 ms at 64 conns | {p99:.1f} ms | "
          f"{mark(p99 <= TARGETS['write_p99_ms_at_64'])} |")
    for label, (test, rr) in read_ratios.items():
        if rr is None:
            continue
        need = TARGETS["proxied_vs_nginx"] if test.startswith("proxied") else TARGETS["cached_vs_nginx"]
        w(f"| {label} ≥ {need:.1f}× nginx | {fmt_ratio(rr)} | {mark(rr >= need)} |")
    if "gateway" in rss:
        w(f"| RSS ≤ 50 MB under 1,000 connections | {rss['gateway']:.1f} MB | "
          f"{mark(rss['gateway'] <= TARGETS['rss_mb_1000_conns'])} |")
    w()
    other = [r["other_cpu_pct"] for r in runs if "other_cpu_pct" in r]
    if other:
        w(f"Machine noise: CPU used by processes outside the benchmark during the runs: "
          f"max {max(other)} %, mean {sum(other) / len(other):.1f} % of the machine.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(sys.argv[1]))
