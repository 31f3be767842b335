"""The measurements of bench/delta.sh and its table.

  delta_report.py row --phase emu|lo --round N --tool new|old|rsync --scenario S --seconds T
                      --before JSON --after JSON --output FILE
                      [--first-before JSON --first-after JSON --stopped-at F --kept F]
      prints one JSON line: the client's own figures from FILE (boxsync's --json line:
      transferred, reused, up_to_date; rsync's --stats: bytes received and sent, literal
      and matched data) and the bytes on the wire between linkemu's counters BEFORE and
      AFTER (both directions; with --first-*, a resume's interrupted run is added)
  delta_report.py brief       one row (stdin) in a few words, for the progress lines
  delta_report.py table --rows FILE --size BYTES ... BUILD...
      the summary (markdown): medians over the rounds, every run in rows.jsonl
"""

import argparse
import json
import re
import statistics
import sys

SCENARIOS = ["first", "overwrite", "append", "rename", "insert", "resume"]
LABEL = {
    "first": "1 first copy (empty destination)",
    "overwrite": "2 1 MiB overwritten in the middle",
    "append": "3 1 MiB appended",
    "rename": "4 rename",
    "insert": "5 10 bytes inserted at offset 100",
    "resume": "6 resume after a kill at 1/2",
}


def link_bytes(before, after):
    """Bytes (IP packets) across linkemu between two emu_stats lines: (both ways, down,
    packets the full queue dropped in either direction)."""
    if not before or not after:
        return None, None, None
    b, a = json.loads(before), json.loads(after)
    if "a_to_b" not in a:
        return None, None, None

    def delta(key):
        return sum(a[d][key] - b[d][key] for d in ("a_to_b", "b_to_a"))
    down = a["b_to_a"]["bytes"] - b["b_to_a"]["bytes"]
    return delta("bytes"), down, delta("queue_drops")


def client_figures(path, tool):
    text = open(path, errors="replace").read()
    if tool == "rsync":
        out = {}
        for key, field in (("rsync_received", "Total bytes received"),
                           ("rsync_sent", "Total bytes sent"),
                           ("literal", "Literal data"), ("matched", "Matched data")):
            m = re.search(rf"^{field}: ([\d,]+)", text, re.M)
            out[key] = int(m.group(1).replace(",", "")) if m else None
        return out
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            d = json.loads(line)
            return {"transferred": d.get("transferred"), "reused": d.get("reused"),
                    "up_to_date": bool(d.get("up_to_date")), "reported_s": d.get("seconds")}
    sys.exit(f"bench: no JSON line in {path}")


def row(args):
    r = {"phase": args.phase, "round": args.round, "tool": args.tool,
         "scenario": args.scenario, "seconds": float(args.seconds)}
    r.update(client_figures(args.output, args.tool))
    wire, down, drops = link_bytes(args.before, args.after)
    if args.stopped_at is not None:
        r["stopped_at"] = float(args.stopped_at)
        r["kept"] = float(args.kept)
        w1, d1, q1 = link_bytes(args.first_before, args.first_after)
        r["first_wire"] = w1
        if wire is not None:
            wire, down, drops = wire + w1, down + d1, drops + q1
    if wire is None:
        # Loopback: no counter of this run's packets; the clients' own figures instead.
        wire = r["transferred"] if args.tool != "rsync" else r["rsync_received"] + r["rsync_sent"]
        r["wire_kind"] = "app"
    else:
        r["wire_kind"] = "link"
    r["wire"], r["wire_down"], r["queue_drops"] = wire, down, drops
    print(json.dumps(r))


def human(n):
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1048576:.2f} MiB"


def brief(_args):
    r = json.loads(sys.stdin.read())
    parts = [f"{r['seconds']:.3f} s", f"wire {human(r['wire'])}"
             + (f" ({r['queue_drops']} packets dropped at the queue)" if r.get("queue_drops") else "")]
    if r["tool"] == "rsync":
        parts.append(f"literal {human(r['literal'])}, matched {human(r['matched'])}")
    else:
        parts.append(f"transferred {human(r['transferred'])}, reused {human(r['reused'])}"
                     + (" (up to date)" if r.get("up_to_date") else ""))
    if "stopped_at" in r:
        parts.append(f"stopped at {r['stopped_at']:.3f} of the file, {r['kept']:.3f} kept, first run wire {human(r['first_wire'])}")
    print("; ".join(parts))


def table(args):
    rows = [json.loads(line) for line in open(args.rows) if line.strip()]
    size = args.size
    groups = {}
    for r in rows:
        groups.setdefault((r["phase"], r["scenario"], r["tool"]), []).append(r)

    def med(phase, scen, tool, key):
        vals = [r[key] for r in groups.get((phase, scen, tool), []) if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def t(x):
        return "-" if x is None else f"{x:.3f} s"

    def b(x):
        return "-" if x is None else human(int(x))

    has_old = any(r["tool"] == "old" for r in rows)
    print(f"file: {size / 1048576:.0f} MiB; {args.runs} round(s) from {args.started}; medians; "
          f"link: {args.link}; steal {args.steal} CPU-s over the run")
    for build in args.builds:
        print(f"  {build}")
    print()
    head = ["scenario", "boxsync time", "wire", "transferred", "rsync time", "wire", "literal",
            "boxsync/rsync time"]
    if has_old:
        head += ["old time", "old wire", "new/old time"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    keys = [("emu", s) for s in SCENARIOS] + [("lo", "overwrite")]
    for phase, scen in keys:
        if (phase, scen, "new") not in groups:
            continue
        label = LABEL[scen] if phase == "emu" else "2 on loopback (app bytes)"
        nt, rt = med(phase, scen, "new", "seconds"), med(phase, scen, "rsync", "seconds")
        cells = [label, t(nt), b(med(phase, scen, "new", "wire")),
                 b(med(phase, scen, "new", "transferred")), t(rt),
                 b(med(phase, scen, "rsync", "wire")), b(med(phase, scen, "rsync", "literal")),
                 f"{nt / rt:.2f}" if nt and rt else "-"]
        if has_old:
            ot = med(phase, scen, "old", "seconds")
            cells += [t(ot), b(med(phase, scen, "old", "wire")), f"{nt / ot:.2f}" if nt and ot else "-"]
        print("| " + " | ".join(cells) + " |")
    print()
    print("wire: IP bytes across linkemu, both directions (on loopback: boxsync's transferred, "
          "rsync's bytes received + sent); transferred: boxsync's own figure; literal: rsync's "
          "--stats; time: the whole client command; resume: wire over both runs, time of the rerun; "
          "an uninterrupted first copy already costs its headers, acks and queue-drop "
          "retransmissions (wire / file of the first copy above)")
    for tool in ("new", "old", "rsync"):
        w = med("emu", "resume", tool, "wire")
        if w is None:
            continue
        stop = med("emu", "resume", tool, "stopped_at")
        kept = med("emu", "resume", tool, "kept")
        goal = " (goal <= 1.1)" if tool == "new" else ""
        name = "rsync --partial (SIGTERM)" if tool == "rsync" else f"boxsync {tool} (SIGKILL)"
        first = med("emu", "first", tool, "wire")
        vs_first = f", / its first copy's wire {w / first:.3f}" if first else ""
        print(f"resume, {name}: wire over both runs / file = {w / size:.3f}{goal}{vs_first}; "
              f"stopped at {stop:.3f} of the file, {kept:.3f} kept for the rerun")
    nt = med("lo", "overwrite", "new", "seconds")
    if nt is not None:
        print(f"loopback overwrite, boxsync new: {nt:.3f} s (goal < 1 s)")
    bt, lit = med("emu", "insert", "new", "transferred"), med("emu", "insert", "rsync", "literal")
    if bt is not None and lit is not None:
        print(f"insert: boxsync transferred {human(int(bt))} against rsync's literal data {human(int(lit))}"
              " (what rolling matching would save)")
    print(f"machine: {args.machine}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("row")
    for a in ("--phase", "--round", "--tool", "--scenario", "--seconds", "--output"):
        r.add_argument(a, required=True)
    r.add_argument("--before", default="")
    r.add_argument("--after", default="")
    r.add_argument("--first-before", default="")
    r.add_argument("--first-after", default="")
    r.add_argument("--stopped-at")
    r.add_argument("--kept")
    sub.add_parser("brief")
    t = sub.add_parser("table")
    t.add_argument("--rows", required=True)
    t.add_argument("--size", type=int, required=True)
    t.add_argument("--runs", required=True)
    t.add_argument("--started", required=True)
    t.add_argument("--steal", required=True)
    t.add_argument("--link", required=True)
    t.add_argument("--machine", required=True)
    t.add_argument("builds", nargs="*")
    args = p.parse_args()
    {"row": row, "brief": brief, "table": table}[args.cmd](args)


if __name__ == "__main__":
    main()
