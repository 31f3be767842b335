"""Bookkeeping for bench/udp_vs_tcp.sh, kept out of the shell script.

    row     one download's measurements -> one CSV row on stdout (and a line on stderr)
    finish  merge the new rows with earlier results, write the CSV, print a table, plot
"""

import argparse
import csv
import datetime
import json
import math
import re
import statistics
import sys

COLUMNS = [
    "transport", "loss_pct", "run", "seed", "status", "goodput_mbit", "bytes", "seconds", "size_bytes",
    "data_packets", "queue_drops", "self_loss_pct", "random_lost",
    "rtt_idle_ms", "rtt_busy_median_ms", "rtt_busy_p95_ms",
    "added_delay_median_ms", "added_delay_p95_ms", "emu_late_us_mean", "emu_late_us_max",
    "link", "date", "note",
]
LABELS = {"tcp-cubic": "TCP CUBIC", "tcp-bbr": "TCP BBR", "udp": "UDP"}
ORDER = ["tcp-cubic", "tcp-bbr", "udp"]


def ping_times(path):
    """RTTs (ms) of the replies in a ping output."""
    with open(path) as f:
        return [float(m.group(1)) for m in re.finditer(r"time=([0-9.]+) ms", f.read())]


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, math.ceil(p / 100 * len(values)) - 1)]


def fmt(x, digits=3):
    return "" if x is None else f"{x:.{digits}f}"


def row(args):
    out = {c: "" for c in COLUMNS}
    out.update(transport=args.transport, loss_pct=args.loss, run=args.run, seed=args.seed,
               status=args.status,
               size_bytes=args.size, link=args.link,
               date=datetime.datetime.now().isoformat(timespec="seconds"))
    result = {}
    try:
        with open(args.client_json) as f:
            lines = [line for line in f if line.strip()]
        result = json.loads(lines[-1]) if lines else {}
    except (OSError, json.JSONDecodeError):
        pass
    bytes_done = seconds = None
    if args.status == "ok" and "seconds" in result:
        bytes_done, seconds = result["size"], result["seconds"]
        if args.clock == "wall":
            seconds = args.wall_us / 1e6
            out["note"] = "clock: the whole client command (process start to exit)"
    elif args.status == "timeout":
        bytes_done, seconds = args.partial_bytes, args.wall_us / 1e6
        out["note"] = ("stopped at the time limit: bytes delivered so far (TCP: acknowledged; "
                       "UDP: in the partial file) / time since the client started")
    else:
        out["status"] = "failed"
        message = result.get("error")
        if not message:
            with open(args.client_log) as f:
                log = f.read().strip().splitlines()
            message = log[-1] if log else "no output"
        out["note"] = message
    if bytes_done is not None and seconds:
        out.update(bytes=bytes_done, seconds=fmt(seconds),
                   goodput_mbit=fmt(bytes_done * 8 / seconds / 1e6, 2))

    # The data flows from the serving box (bxb) to the client (bxa).
    before = json.loads(args.stats_before)["b_to_a"]
    after = json.loads(args.stats_after)["b_to_a"]
    packets = after["packets"] - before["packets"]
    drops = after["queue_drops"] - before["queue_drops"]
    out.update(data_packets=packets, queue_drops=drops,
               random_lost=after["lost"] - before["lost"],
               self_loss_pct=fmt(100 * drops / packets, 3) if packets else "",
               # The emulator's own timing error so far (a sign of a disturbed run).
               emu_late_us_mean=after.get("late_us_mean", ""),
               emu_late_us_max=after.get("late_us_max", ""))

    idle, busy = ping_times(args.ping_idle), ping_times(args.ping_busy)
    if idle:
        base = statistics.median(idle)
        out["rtt_idle_ms"] = fmt(base, 2)
        if busy:
            med, p95 = statistics.median(busy), percentile(busy, 95)
            out.update(rtt_busy_median_ms=fmt(med, 2), rtt_busy_p95_ms=fmt(p95, 2),
                       added_delay_median_ms=fmt(med - base, 2),
                       added_delay_p95_ms=fmt(p95 - base, 2))
    csv.DictWriter(sys.stdout, COLUMNS).writerow(out)
    print(brief(out), file=sys.stderr)


def brief(r):
    what = f"{LABELS.get(r['transport'], r['transport']):9} loss {r['loss_pct']:>4}%"
    if r["status"] == "failed":
        return f"{what}: FAILED ({r['note']})"
    return (f"{what}: {r['goodput_mbit']:>7} Mbit/s ({r['status']}, {r['bytes']} bytes in "
            f"{r['seconds']} s); self-inflicted loss {r['self_loss_pct']}%, "
            f"added delay median {r['added_delay_median_ms']} ms, p95 {r['added_delay_p95_ms']} ms")


def read_rows(path, header):
    """Rows of a CSV file: the results file has a header, the run's own rows have none."""
    with open(path, newline="") as f:
        rows = csv.DictReader(f) if header else csv.DictReader(f, COLUMNS)
        return [{c: r.get(c) or "" for c in COLUMNS} for r in rows]


def group_key(r):
    """Sort key of a (transport, loss) cell."""
    return (ORDER.index(r["transport"]) if r["transport"] in ORDER else 9, float(r["loss_pct"]))


def median_of(rows, column):
    values = [float(r[column]) for r in rows if r[column] != ""]
    return statistics.median(values) if values else None


def cells(rows):
    """The rows grouped by (transport, loss), in display order."""
    groups = {}
    for r in rows:
        groups.setdefault(group_key(r), []).append(r)
    return [groups[k] for k in sorted(groups)]


def finish(args):
    new = read_rows(args.rows, header=False)
    # A cell measured again replaces all of its earlier rows; other cells are kept.
    fresh = {group_key(r) for r in new}
    old = [r for r in (read_rows(args.merge, header=True) if args.merge else []) if group_key(r) not in fresh]
    rows = sorted(old + new, key=lambda r: (group_key(r), int(r["run"] or 1)))
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)

    head = ["transport", "loss %", "goodput Mbit/s", "runs", "range", "seconds",
            "self loss %", "added delay med/p95 ms"]
    table = []
    for cell in cells(rows):
        r = cell[0]
        good = [float(x["goodput_mbit"]) for x in cell if x["goodput_mbit"]]
        statuses = [x["status"] for x in cell]
        runs = f"{len(cell)}" + "".join(f" {statuses.count(s)} {s}" for s in ("timeout", "failed")
                                         if s in statuses)
        table.append([
            LABELS.get(r["transport"], r["transport"]), r["loss_pct"],
            fmt(statistics.median(good), 2) if good else "-", runs,
            f"{min(good):.2f}-{max(good):.2f}" if len(good) > 1 else "",
            fmt(median_of(cell, "seconds"), 1) or "-",
            fmt(median_of(cell, "self_loss_pct"), 2) or "-",
            f"{fmt(median_of(cell, 'added_delay_median_ms'), 1) or '-'} / "
            f"{fmt(median_of(cell, 'added_delay_p95_ms'), 1) or '-'}",
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    for line in [head, *table]:
        print("  ".join(str(x).rjust(w) for x, w in zip(line, widths)))
    print("(medians over runs; 'timeout': stopped at the time limit, goodput from the bytes "
          "received so far)")
    for r in rows:
        if r["transport"] == "udp" and float(r["loss_pct"]) == 0 and r["status"] == "ok":
            print(f"clean-link check (UDP, 0% loss, run {r['run']}): self-inflicted loss "
                  f"{r['self_loss_pct']}% (target <= 1%), added queueing delay median "
                  f"{r['added_delay_median_ms']} ms, p95 {r['added_delay_p95_ms']} ms "
                  f"(target <= 25 ms)")
    plot(rows, args.png)
    print(f"written: {args.csv}, {args.png}")


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"tcp-cubic": ("tab:blue", "o"), "tcp-bbr": ("tab:orange", "s"),
              "udp": ("tab:green", "^")}
    for transport in ORDER:
        points = []
        for cell in cells(r for r in rows if r["transport"] == transport):
            good = [float(x["goodput_mbit"]) for x in cell if x["goodput_mbit"]]
            if good:
                timeout = any(x["status"] == "timeout" for x in cell)
                points.append((float(cell[0]["loss_pct"]), statistics.median(good),
                               min(good), max(good), timeout))
        if not points:
            continue
        color, marker = styles[transport]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.errorbar(xs, ys, yerr=[[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]],
                    color=color, marker=marker, capsize=3, label=LABELS[transport])
        for x, y, _, _, timeout in points:
            if timeout:
                ax.plot(x, y, marker="o", markersize=13, markerfacecolor="none", color=color)
    links = sorted({r["link"] for r in rows if r["link"]})
    sizes = sorted({int(r["size_bytes"]) >> 20 for r in rows if r["size_bytes"]})
    ax.set_xticks(sorted({float(r["loss_pct"]) for r in rows}))
    ax.set_yscale("log")
    ax.set_xlabel("random loss in each direction (%)")
    ax.set_ylabel("goodput (Mbit/s, log scale)")
    ax.set_title("boxsync download of a " + "/".join(map(str, sizes)) + " MiB file across an "
                 "emulated link\n" + "; ".join(links), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="median of runs, bars: min-max\ncircled: stopped at the time limit",
              title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("row")
    r.add_argument("--transport", required=True)
    r.add_argument("--loss", required=True)
    r.add_argument("--run", type=int, default=1)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--size", type=int, required=True)
    r.add_argument("--status", required=True)
    r.add_argument("--client-json", required=True)
    r.add_argument("--client-log", required=True)
    r.add_argument("--partial-bytes", type=int, default=0)
    r.add_argument("--wall-us", type=int, required=True)
    r.add_argument("--clock", choices=("reported", "wall"), default="reported",
                   help="time a completed download by boxsync's own seconds or the whole command")
    r.add_argument("--stats-before", required=True)
    r.add_argument("--stats-after", required=True)
    r.add_argument("--ping-idle", required=True)
    r.add_argument("--ping-busy", required=True)
    r.add_argument("--link", default="")
    f = sub.add_parser("finish")
    f.add_argument("--rows", required=True)
    f.add_argument("--merge")
    f.add_argument("--csv", required=True)
    f.add_argument("--png", required=True)
    args = p.parse_args()
    row(args) if args.cmd == "row" else finish(args)


if __name__ == "__main__":
    main()
