#!/usr/bin/env python3
"""The WAN benchmark's table (tests/bench/wan.sh): medians over rounds per (row, scenario),
with each row's ratios against envoy-h2 from the same run.

usage: report.py RESULTS.jsonl JSON(0|1) "ROWS" "SCENARIOS"
"""
import json
import statistics
import sys


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def main():
    path, as_json, rows, scenarios = sys.argv[1], sys.argv[2] == "1", sys.argv[3].split(), sys.argv[4].split()
    results = [json.loads(line) for line in open(path) if line.strip()]
    summary = {}
    for row in rows:
        for scen in scenarios:
            runs = [r for r in results if r["row"] == row and r["scenario"] == scen]
            if not runs:
                continue
            ok = [r for r in runs if "failed" not in r]
            s = {"row": row, "scenario": scen, "rounds": len(runs), "failed_rounds": len(runs) - len(ok)}
            if ok:
                first = ok[0]
                s.update(link=first["link"], delay_ms=first["delay_ms"], loss_pct=first["loss_pct"], mode=first.get("mode"))
                for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "mib_per_s", "seconds",
                          "oldest_in_flight_ms", "proxy_cores"):
                    s[k] = median([r.get(k) for r in ok])
                s["errors"] = sum(r.get("errors", 0) for r in ok)
                s["in_flight_at_end"] = sum(r.get("in_flight_at_end", 0) or 0 for r in ok)
                s["error_samples"] = sorted({e for r in ok for e in r.get("error_samples", [])})[:3]
                bulk = [r["bulk"] for r in ok if r.get("bulk")]
                if bulk:
                    s["bulk_mib_per_s"] = median([b.get("mib_per_s") for b in bulk])
                paths = [r["b_path"] for r in ok if r.get("b_path")]
                if paths:
                    keys = {k for p in paths for k in p}
                    s["b_path"] = {k: median([p.get(k) for p in paths]) for k in sorted(keys)}
            summary[(row, scen)] = s
    # same-run ratios against envoy-h2
    for (row, scen), s in summary.items():
        base = summary.get((row, "envoy-h2"))
        if not base or scen == "envoy-h2":
            continue
        for k in ("p99_ms", "rps", "mib_per_s"):
            if s.get(k) and base.get(k):
                s[f"{k}_vs_envoy_h2"] = round(s[k] / base[k], 3)
    if as_json:
        for s in summary.values():
            print(json.dumps(s))
        return
    print("| row | scenario | req/s | p50 ms | p99 ms | p999 ms | max ms | MiB/s | proxy CPU (cores) | errors | p99 / req/s (MiB/s) vs envoy-h2 | B's path: lost/sent pkts, congestion events |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (row, scen), s in summary.items():
        if "rps" not in s and "mib_per_s" not in s:
            print(f"| {row} | {scen} | failed in {s['failed_rounds']} of {s['rounds']} rounds | | | | | | | | | |")
            continue
        once = s.get("mode") == "once"
        mib = s.get("mib_per_s")
        mib_txt = fmt(mib, 1)
        if s.get("bulk_mib_per_s") is not None:
            mib_txt = f"{fmt(mib, 2)} (bulk {fmt(s['bulk_mib_per_s'], 1)})"
        ratio = "-"
        if once and "mib_per_s_vs_envoy_h2" in s:
            ratio = f"({s['mib_per_s_vs_envoy_h2']:.2f}x)"
        elif "p99_ms_vs_envoy_h2" in s:
            ratio = f"{s['p99_ms_vs_envoy_h2']:.2f}x / {s.get('rps_vs_envoy_h2', 0):.2f}x"
        errors = str(s["errors"])
        if s.get("oldest_in_flight_ms") and s.get("oldest_in_flight_ms") > (s.get("p99_ms") or 0):
            errors += f" (+{s['in_flight_at_end']} in flight, oldest {fmt(s.get('oldest_in_flight_ms'))} ms)"
        if s["failed_rounds"]:
            errors += f" [{s['failed_rounds']} round(s) failed]"
        p = s.get("b_path") or {}
        path = "-"
        if p:
            path = (f"{fmt(p.get('quiver_quic_lost_packets'))}/{fmt(p.get('quiver_quic_sent_packets'))}, "
                    f"{fmt(p.get('quiver_quic_congestion_events'))}")
        cores = fmt(s.get("proxy_cores"), 2)
        if once:
            print(f"| {row} | {scen} | - | {fmt(s.get('seconds'), 1)} s total | | | | {mib_txt} | {cores} | {errors} | {ratio} | {path} |")
        else:
            print(f"| {row} | {scen} | {fmt(s.get('rps'))} | {fmt(s.get('p50_ms'), 1)} | {fmt(s.get('p99_ms'), 1)} | "
                  f"{fmt(s.get('p999_ms'), 1)} | {fmt(s.get('max_ms'), 1)} | {mib_txt} | {cores} | {errors} | {ratio} | {path} |")
    samples = {e for s in summary.values() for e in s.get("error_samples", [])}
    if samples:
        print("\nerror samples: " + "; ".join(sorted(samples)))


if __name__ == "__main__":
    main()
