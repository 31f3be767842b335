//! dbeval: redb vs SQLite (rusqlite bundled) on a boxsync-index-like workload.
//! Usage: dbeval <phase> <engine> <path> [N]
//!   engine: redb | sqlf (SQLite WAL, synchronous=FULL) | sqln (SQLite WAL, synchronous=NORMAL)
//!   phase: load N | openscan | ops N | crashchild | crashcheck
//! Every phase prints one line "RESULT engine phase key=value ...".
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use rusqlite::{Connection, params};
use std::time::Instant;

const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
const SEQ: TableDefinition<u64, &str> = TableDefinition::new("seq");
const CACHE: usize = 16 * 1024 * 1024;
const BATCH: usize = 10_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn path_of(i: usize) -> String {
    format!("dir{:04}/file{:06}.txt", i / 1000, i % 1000)
}

#[derive(Clone, Copy)]
struct Meta {
    size: u64,
    mtime: i64,
    mode: u32,
    inode: u64,
    ctime: i64,
    hash: [u8; 32],
    seq: u64,
    flags: u8,
}
const VLEN: usize = 8 + 8 + 4 + 8 + 8 + 32 + 8 + 1; // 77 bytes

impl Meta {
    fn make(r: &mut Rng, seq: u64) -> Meta {
        let mut hash = [0u8; 32];
        for c in hash.chunks_mut(8) {
            c.copy_from_slice(&r.next().to_le_bytes());
        }
        Meta {
            size: r.next() % 10_000_000,
            mtime: (r.next() >> 2) as i64,
            mode: 0o100644,
            inode: r.next() >> 20,
            ctime: (r.next() >> 2) as i64,
            hash,
            seq,
            flags: 0,
        }
    }
    fn enc(&self) -> [u8; VLEN] {
        let mut b = [0u8; VLEN];
        b[0..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..16].copy_from_slice(&self.mtime.to_le_bytes());
        b[16..20].copy_from_slice(&self.mode.to_le_bytes());
        b[20..28].copy_from_slice(&self.inode.to_le_bytes());
        b[28..36].copy_from_slice(&self.ctime.to_le_bytes());
        b[36..68].copy_from_slice(&self.hash);
        b[68..76].copy_from_slice(&self.seq.to_le_bytes());
        b[76] = self.flags;
        b
    }
    fn seq_of(b: &[u8]) -> u64 {
        u64::from_le_bytes(b[68..76].try_into().unwrap())
    }
    fn size_of(b: &[u8]) -> u64 {
        u64::from_le_bytes(b[0..8].try_into().unwrap())
    }
}

fn hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    for l in s.lines() {
        if let Some(v) = l.strip_prefix("VmHWM:") {
            return v.trim().trim_end_matches(" kB").trim().parse().unwrap();
        }
    }
    0
}

fn file_size(path: &str) -> u64 {
    let mut t = 0;
    for suf in ["", "-wal", "-shm"] {
        if let Ok(m) = std::fs::metadata(format!("{path}{suf}")) {
            t += m.len();
        }
    }
    t
}

fn sqlite_open(path: &str, engine: &str) -> Connection {
    let c = Connection::open(path).unwrap();
    let sync = if engine == "sqlf" { "FULL" } else { "NORMAL" };
    c.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA cache_size=-16000;"
    ))
    .unwrap();
    c
}

fn sqlite_schema(c: &Connection) {
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS files(path TEXT PRIMARY KEY NOT NULL, size INTEGER NOT NULL,
           mtime_ns INTEGER NOT NULL, mode INTEGER NOT NULL, inode INTEGER NOT NULL,
           ctime_ns INTEGER NOT NULL, blake3 BLOB NOT NULL, seq INTEGER NOT NULL,
           flags INTEGER NOT NULL) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS files_seq ON files(seq);",
    )
    .unwrap();
}

fn redb_open(path: &str) -> Database {
    Database::builder().set_cache_size(CACHE).open(path).unwrap()
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn upsert_sql(c: &Connection, p: &str, m: &Meta) {
    let mut st = c
        .prepare_cached(
            "INSERT INTO files(path,size,mtime_ns,mode,inode,ctime_ns,blake3,seq,flags)
             VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9)
             ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns,
             mode=excluded.mode, inode=excluded.inode, ctime_ns=excluded.ctime_ns,
             blake3=excluded.blake3, seq=excluded.seq, flags=excluded.flags",
        )
        .unwrap();
    st.execute(params![
        p,
        m.size as i64,
        m.mtime,
        m.mode,
        m.inode as i64,
        m.ctime,
        &m.hash[..],
        m.seq as i64,
        m.flags
    ])
    .unwrap();
}

/// redb upsert maintaining the seq index (delete old seq entry).
fn upsert_redb(files: &mut redb::Table<&str, &[u8]>, seqt: &mut redb::Table<u64, &str>, p: &str, m: &Meta) {
    let old = files.insert(p, &m.enc()[..]).unwrap().map(|g| Meta::seq_of(g.value()));
    if let Some(os) = old {
        seqt.remove(os).unwrap();
    }
    seqt.insert(m.seq, p).unwrap();
}

fn load(engine: &str, path: &str, n: usize) {
    let mut r = Rng(42);
    // shuffled insertion order (readdir order is not sorted)
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = r.below(i + 1);
        order.swap(i, j);
    }
    let t = Instant::now();
    let mut commits = Vec::new();
    if engine == "redb" {
        let db = Database::builder().set_cache_size(CACHE).create(path).unwrap();
        for (bi, chunk) in order.chunks(BATCH).enumerate() {
            let tc = Instant::now();
            let tx = db.begin_write().unwrap();
            {
                let mut f = tx.open_table(FILES).unwrap();
                let mut s = tx.open_table(SEQ).unwrap();
                for (k, &i) in chunk.iter().enumerate() {
                    let seq = (bi * BATCH + k + 1) as u64;
                    let m = Meta::make(&mut r, seq);
                    let p = path_of(i);
                    f.insert(p.as_str(), &m.enc()[..]).unwrap();
                    s.insert(seq, p.as_str()).unwrap();
                }
            }
            tx.commit().unwrap();
            commits.push(ms(tc));
        }
        drop(db);
    } else {
        let mut c = sqlite_open(path, engine);
        sqlite_schema(&c);
        for (bi, chunk) in order.chunks(BATCH).enumerate() {
            let tc = Instant::now();
            let tx = c.transaction().unwrap();
            {
                let mut st = tx
                    .prepare_cached(
                        "INSERT INTO files(path,size,mtime_ns,mode,inode,ctime_ns,blake3,seq,flags)
                         VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9)",
                    )
                    .unwrap();
                for (k, &i) in chunk.iter().enumerate() {
                    let seq = (bi * BATCH + k + 1) as u64;
                    let m = Meta::make(&mut r, seq);
                    st.execute(params![
                        path_of(i),
                        m.size as i64,
                        m.mtime,
                        m.mode,
                        m.inode as i64,
                        m.ctime,
                        &m.hash[..],
                        m.seq as i64,
                        m.flags
                    ])
                    .unwrap();
                }
            }
            tx.commit().unwrap();
            commits.push(ms(tc));
        }
        drop(c); // checkpoints and removes the WAL
    }
    let total = ms(t);
    let med = pct(&mut commits, 0.5);
    println!(
        "RESULT {engine} load n={n} total_ms={total:.0} batch_commit_med_ms={med:.1} size_bytes={} hwm_kib={}",
        file_size(path),
        hwm_kib()
    );
}

/// Cold open (caller drops caches first), first point read, then a full key-order scan.
fn openscan(engine: &str, path: &str) {
    let probe = path_of(12345);
    let t = Instant::now();
    let (open_ms, scan_ms, rows);
    if engine == "redb" {
        let db = redb_open(path);
        let rt = db.begin_read().unwrap();
        let f = rt.open_table(FILES).unwrap();
        assert!(f.get(probe.as_str()).unwrap().is_some());
        open_ms = ms(t);
        let t2 = Instant::now();
        let (mut cnt, mut acc) = (0u64, 0u64);
        for e in f.iter().unwrap() {
            let (k, v) = e.unwrap();
            acc = acc.wrapping_add(k.value().len() as u64 + Meta::size_of(v.value()));
            cnt += 1;
        }
        std::hint::black_box(acc);
        scan_ms = ms(t2);
        rows = cnt;
    } else {
        let c = sqlite_open(path, engine);
        let got: i64 = c
            .query_row("SELECT size FROM files WHERE path=?1", [&probe], |r| r.get(0))
            .unwrap();
        std::hint::black_box(got);
        open_ms = ms(t);
        let t2 = Instant::now();
        let mut st = c.prepare("SELECT path,size,mtime_ns,mode,inode,ctime_ns,blake3,seq,flags FROM files ORDER BY path").unwrap();
        let mut q = st.query([]).unwrap();
        let (mut cnt, mut acc) = (0u64, 0u64);
        while let Some(row) = q.next().unwrap() {
            let p = row.get_ref(0).unwrap().as_str().unwrap();
            let s: i64 = row.get(1).unwrap();
            let h = row.get_ref(6).unwrap().as_blob().unwrap();
            acc = acc.wrapping_add(p.len() as u64 + s as u64 + h[0] as u64);
            cnt += 1;
        }
        std::hint::black_box(acc);
        scan_ms = ms(t2);
        rows = cnt;
    }
    println!(
        "RESULT {engine} openscan open_first_read_ms={open_ms:.1} cold_scan_ms={scan_ms:.0} rows={rows} hwm_kib={}",
        hwm_kib()
    );
}

fn ops(engine: &str, path: &str, n: usize) {
    let mut r = Rng(7);
    let mut next_seq = n as u64 + 1;
    let mut single = Vec::new();
    let mut thousand = Vec::new();
    let (lookup_ms, scan_ms, range_ms, range_rows);
    if engine == "redb" {
        let db = redb_open(path);
        for _ in 0..1000 {
            let p = path_of(r.below(n));
            let m = Meta::make(&mut r, next_seq);
            next_seq += 1;
            let t = Instant::now();
            let tx = db.begin_write().unwrap();
            {
                let mut f = tx.open_table(FILES).unwrap();
                let mut s = tx.open_table(SEQ).unwrap();
                upsert_redb(&mut f, &mut s, &p, &m);
            }
            tx.commit().unwrap();
            single.push(ms(t));
        }
        for _ in 0..100 {
            let t = Instant::now();
            let tx = db.begin_write().unwrap();
            {
                let mut f = tx.open_table(FILES).unwrap();
                let mut s = tx.open_table(SEQ).unwrap();
                for _ in 0..1000 {
                    let p = path_of(r.below(n));
                    let m = Meta::make(&mut r, next_seq);
                    next_seq += 1;
                    upsert_redb(&mut f, &mut s, &p, &m);
                }
            }
            tx.commit().unwrap();
            thousand.push(ms(t));
        }
        let rt = db.begin_read().unwrap();
        let f = rt.open_table(FILES).unwrap();
        let s = rt.open_table(SEQ).unwrap();
        // warm full scan (also warms cache/page cache for lookups)
        let t = Instant::now();
        let mut acc = 0u64;
        for e in f.iter().unwrap() {
            let (k, v) = e.unwrap();
            acc = acc.wrapping_add(k.value().len() as u64 + Meta::size_of(v.value()));
        }
        std::hint::black_box(acc);
        scan_ms = ms(t);
        let t = Instant::now();
        for _ in 0..100_000 {
            let p = path_of(r.below(n));
            let g = f.get(p.as_str()).unwrap().unwrap();
            acc = acc.wrapping_add(Meta::size_of(g.value()));
        }
        std::hint::black_box(acc);
        lookup_ms = ms(t);
        let since = next_seq - 1 - 1000;
        let t = Instant::now();
        let mut cnt = 0;
        for e in s.range(since + 1..).unwrap() {
            let (_, p) = e.unwrap();
            let g = f.get(p.value()).unwrap().unwrap();
            acc = acc.wrapping_add(Meta::size_of(g.value()));
            cnt += 1;
        }
        std::hint::black_box(acc);
        range_ms = ms(t);
        range_rows = cnt;
    } else {
        let mut c = sqlite_open(path, engine);
        for _ in 0..1000 {
            let p = path_of(r.below(n));
            let m = Meta::make(&mut r, next_seq);
            next_seq += 1;
            let t = Instant::now();
            let tx = c.transaction().unwrap();
            upsert_sql(&tx, &p, &m);
            tx.commit().unwrap();
            single.push(ms(t));
        }
        for _ in 0..100 {
            let t = Instant::now();
            let tx = c.transaction().unwrap();
            for _ in 0..1000 {
                let p = path_of(r.below(n));
                let m = Meta::make(&mut r, next_seq);
                next_seq += 1;
                upsert_sql(&tx, &p, &m);
            }
            tx.commit().unwrap();
            thousand.push(ms(t));
        }
        let tx = c.transaction().unwrap(); // one read snapshot, like redb's read txn
        let t = Instant::now();
        let mut acc = 0u64;
        {
            let mut st = tx.prepare("SELECT path,size,mtime_ns,mode,inode,ctime_ns,blake3,seq,flags FROM files ORDER BY path").unwrap();
            let mut q = st.query([]).unwrap();
            while let Some(row) = q.next().unwrap() {
                let p = row.get_ref(0).unwrap().as_str().unwrap();
                let s: i64 = row.get(1).unwrap();
                acc = acc.wrapping_add(p.len() as u64 + s as u64);
            }
        }
        std::hint::black_box(acc);
        scan_ms = ms(t);
        let t = Instant::now();
        {
            let mut st = tx
                .prepare_cached("SELECT size,mtime_ns,mode,inode,ctime_ns,blake3,seq,flags FROM files WHERE path=?1")
                .unwrap();
            for _ in 0..100_000 {
                let p = path_of(r.below(n));
                let s: i64 = st.query_row([&p], |row| row.get(0)).unwrap();
                acc = acc.wrapping_add(s as u64);
            }
        }
        std::hint::black_box(acc);
        lookup_ms = ms(t);
        let since = next_seq - 1 - 1000;
        let t = Instant::now();
        let mut cnt = 0;
        {
            let mut st = tx
                .prepare("SELECT path,size,mtime_ns,mode,inode,ctime_ns,blake3,seq,flags FROM files WHERE seq>?1 ORDER BY seq")
                .unwrap();
            let mut q = st.query([since as i64]).unwrap();
            while let Some(row) = q.next().unwrap() {
                let s: i64 = row.get(1).unwrap();
                acc = acc.wrapping_add(s as u64);
                cnt += 1;
            }
        }
        std::hint::black_box(acc);
        range_ms = ms(t);
        range_rows = cnt;
        tx.commit().unwrap();
    }
    let s_med = pct(&mut single, 0.5);
    let s_p99 = pct(&mut single, 0.99);
    let k_med = pct(&mut thousand, 0.5);
    let k_p99 = pct(&mut thousand, 0.99);
    println!(
        "RESULT {engine} ops n={n} upd1_med_ms={s_med:.2} upd1_p99_ms={s_p99:.2} upd1000_med_ms={k_med:.1} upd1000_p99_ms={k_p99:.1} lookups_per_s={:.0} warm_scan_ms={scan_ms:.0} range1000_ms={range_ms:.2} range_rows={range_rows} size_after_bytes={}",
        100_000.0 / (lookup_ms / 1000.0),
        file_size(path)
    );
}

const CRASH_ROWS: usize = 50;

/// Loops forever: txn k writes counter=k and CRASH_ROWS rows all = k, then prints "C k".
fn crashchild(engine: &str, path: &str) {
    use std::io::Write;
    let out = std::io::stdout();
    let mut k: u64 = 0;
    if engine == "redb" {
        let db = Database::builder().set_cache_size(CACHE).create(path).unwrap();
        {
            let rt = db.begin_read().unwrap();
            if let Ok(f) = rt.open_table(FILES) {
                if let Some(g) = f.get("counter").unwrap() {
                    k = Meta::seq_of(g.value());
                }
            }
        }
        loop {
            k += 1;
            let tx = db.begin_write().unwrap();
            {
                let mut f = tx.open_table(FILES).unwrap();
                let mut s = tx.open_table(SEQ).unwrap();
                for j in 0..CRASH_ROWS {
                    let mut m = Meta::make(&mut Rng(k), k * 100 + j as u64);
                    m.size = k;
                    upsert_redb(&mut f, &mut s, &format!("crash/r{j:03}_{}", k % 7), &m);
                }
                let mut m = Meta::make(&mut Rng(k), k);
                m.size = k;
                f.insert("counter", &m.enc()[..]).unwrap();
            }
            tx.commit().unwrap();
            let mut o = out.lock();
            writeln!(o, "C {k}").unwrap();
            o.flush().unwrap();
        }
    } else {
        let mut c = sqlite_open(path, engine);
        sqlite_schema(&c);
        if let Ok(v) = c.query_row("SELECT size FROM files WHERE path='counter'", [], |r| r.get::<_, i64>(0)) {
            k = v as u64;
        }
        loop {
            k += 1;
            let tx = c.transaction().unwrap();
            for j in 0..CRASH_ROWS {
                let mut m = Meta::make(&mut Rng(k), k * 100 + j as u64);
                m.size = k;
                upsert_sql(&tx, &format!("crash/r{j:03}_{}", k % 7), &m);
            }
            let mut m = Meta::make(&mut Rng(k), k);
            m.size = k;
            upsert_sql(&tx, "counter", &m);
            tx.commit().unwrap();
            let mut o = out.lock();
            writeln!(o, "C {k}").unwrap();
            o.flush().unwrap();
        }
    }
}

/// Prints "CHECK counter=K ok=bool": opens, integrity check, every crash row of the
/// last txn's group (k%7) equals counter, and seq index consistent for crash rows.
fn crashcheck(engine: &str, path: &str) {
    let (k, ok);
    if engine == "redb" {
        let mut db = Database::builder().set_cache_size(CACHE).open(path).unwrap();
        let integ = db.check_integrity().unwrap();
        if !integ { eprintln!("redb check_integrity returned false (repaired)"); }
        let rt = db.begin_read().unwrap();
        let f = rt.open_table(FILES).unwrap();
        let s = rt.open_table(SEQ).unwrap();
        k = f.get("counter").unwrap().map(|g| Meta::size_of(g.value())).unwrap_or(0);
        let mut good = integ;
        if k > 0 {
            for j in 0..CRASH_ROWS {
                let p = format!("crash/r{j:03}_{}", k % 7);
                let v = f.get(p.as_str()).unwrap().map(|g| Meta::size_of(g.value()));
                good &= v == Some(k);
            }
            // every seq entry points at a row with that seq, and count matches rows
            let mut n = 0;
            for e in s.iter().unwrap() {
                let (sq, p) = e.unwrap();
                let g = f.get(p.value()).unwrap();
                good &= g.map(|g| Meta::seq_of(g.value())) == Some(sq.value());
                n += 1;
            }
            let rows = f.len().unwrap() - 1; // counter has no seq entry
            if n != rows { eprintln!("seq index {n} != rows {rows}"); }
            good &= n == rows;
        }
        ok = good;
    } else {
        let c = sqlite_open(path, engine);
        let integ: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        k = c
            .query_row("SELECT size FROM files WHERE path='counter'", [], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
            .unwrap_or(0);
        let mut good = integ == "ok";
        if k > 0 {
            let n: i64 = c
                .query_row(
                    "SELECT count(*) FROM files WHERE path LIKE ?1 AND size=?2",
                    params![format!("crash/r%_{}", k % 7), k as i64],
                    |r| r.get(0),
                )
                .unwrap();
            good &= n == CRASH_ROWS as i64;
        }
        ok = good;
    }
    println!("CHECK counter={k} ok={ok}");
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (phase, engine, path) = (a[1].as_str(), a[2].as_str(), a[3].as_str());
    let n = a.get(4).map(|s| s.parse().unwrap()).unwrap_or(1_000_000);
    match phase {
        "load" => load(engine, path, n),
        "openscan" => openscan(engine, path),
        "ops" => ops(engine, path, n),
        "crashchild" => crashchild(engine, path),
        "crashcheck" => crashcheck(engine, path),
        "crashdrive" => crashdrive(engine, path),
        "compact" => {
            // redb only: size before/after Database::compact()
            let before = file_size(path);
            let t = Instant::now();
            let mut db = redb_open(path);
            while db.compact().unwrap() {}
            drop(db);
            println!("RESULT {engine} compact before={before} after={} ms={:.0}", file_size(path), ms(t));
        }
        _ => panic!("phase?"),
    }
}

/// 20 times: start crashchild, SIGKILL it at a random moment (30..400 ms), then run
/// crashcheck in a fresh process; pass if it opens, is consistent, and the counter
/// is >= the last commit the child reported (and at most one more).
fn crashdrive(engine: &str, path: &str) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    for suf in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suf}"));
    }
    let exe = std::env::current_exe().unwrap();
    let mut r = Rng(std::process::id() as u64);
    let mut passes = 0;
    let mut detail = Vec::new();
    for _ in 0..20 {
        let mut ch = Command::new(&exe)
            .args(["crashchild", engine, path])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let so = ch.stdout.take().unwrap();
        let last = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let l2 = last.clone();
        let th = std::thread::spawn(move || {
            for line in std::io::BufReader::new(so).lines() {
                let Ok(line) = line else { break };
                if let Some(v) = line.strip_prefix("C ") {
                    l2.store(v.parse().unwrap(), std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(30 + r.below(370) as u64));
        ch.kill().unwrap(); // SIGKILL
        ch.wait().unwrap();
        th.join().unwrap();
        let reported = last.load(std::sync::atomic::Ordering::SeqCst);
        let out = Command::new(&exe).args(["crashcheck", engine, path]).output().unwrap();
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        let mut k = u64::MAX;
        let mut ok = false;
        for w in s.split_whitespace() {
            if let Some(v) = w.strip_prefix("counter=") { k = v.parse().unwrap(); }
            if w == "ok=true" { ok = true; }
        }
        let pass = out.status.success() && ok && k >= reported && k <= reported + 1;
        if pass { passes += 1; }
        detail.push(format!("{reported}/{k}{}", if pass { "" } else { "!FAIL" }));
    }
    println!("RESULT {engine} crash passes={passes}/20 reported/db={}", detail.join(","));
}
