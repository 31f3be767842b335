import sys, re, statistics, collections
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    if 'RESULT' not in line or ' crash ' in line: continue
    kv = dict(re.findall(r'(\w+)=(\S+)', line))
    toks = line.split()
    i = toks.index('RESULT'); eng, ph = toks[i+1], toks[i+2]
    n = kv.get('n')
    for k, v in kv.items():
        if k in ('run', 'n', 'rows', 'range_rows'): continue
        d[(n, ph, k, eng)].append(float(v))
keys = sorted({(n, ph, k) for (n, ph, k, e) in d}, key=lambda x: (int(x[0]), x[1], x[2]))
print(f"{'N':>8} {'measure':34} {'redb':>14} {'sqlf':>14} {'sqln':>14}   (median of runs)")
for n, ph, k in keys:
    row = []
    for e in ('redb', 'sqlf', 'sqln'):
        v = d.get((n, ph, k, e))
        row.append(f"{statistics.median(v):.6g}({len(v)})" if v else '-')
    print(f"{n:>8} {ph+'.'+k:34} {row[0]:>14} {row[1]:>14} {row[2]:>14}")
