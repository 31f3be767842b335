#!/bin/bash
# Issue 20's choice of index database: redb against SQLite (rusqlite, bundled), the same
# workload, engines alternated. Root (drop_caches); data in /tmp/dbeval. About 9 minutes:
#   bash bench/dbeval/run.sh      -> bench/dbeval/results/{raw,summary}.txt
set -e
here=$(cd "$(dirname "$0")" && pwd)
cd "$here" && cargo build --release -q
B=$here/target/release/dbeval
D=/tmp/dbeval; mkdir -p $D results
OUT=results/raw.txt; : > $OUT
RUNS=${RUNS:-3}
orders=("redb sqlf sqln" "sqlf sqln redb" "sqln redb sqlf" "redb sqlf sqln" "sqlf sqln redb")
for run in $(seq 1 $RUNS); do
  for N in 100000 1000000; do
    for e in ${orders[$(( (run-1) % 5 ))]}; do
      f=$D/$e-$N.db; rm -f $f $f-wal $f-shm
      echo "run=$run $($B load $e $f $N)" | tee -a $OUT
      sync; echo 3 > /proc/sys/vm/drop_caches
      echo "run=$run n=$N $($B openscan $e $f)" | tee -a $OUT
      echo "run=$run $($B ops $e $f $N)" | tee -a $OUT
      rm -f $f $f-wal $f-shm
    done
  done
done
for e in redb sqlf sqln; do echo "$($B crashdrive $e $D/crash-$e.db)" | tee -a $OUT; done
python3 summarize.py $OUT | tee results/summary.txt
