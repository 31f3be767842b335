//! Turning command outcomes into text: aligned tables for people (fitted to the
//! terminal's width, coloured when colours are on), one JSON document per line for
//! programs.
//!
//! Text from a peer or the disk (names, types, error messages, addresses) is escaped
//! ([`crate::text::escape`]) wherever it goes into a line, so that it cannot act on the
//! terminal: table cells are escaped by [`table::render`], every other line here escapes
//! what it quotes, and JSON is written by [`crate::text::json`].

use serde_json::{Value, json};

use super::jobs::{Fetched, JobEvent, JobStatus};
use super::many::Summary;
use super::remote;
use super::session::Outcome;
use super::table::{self, Column, Fit};
use crate::history::Direction;
use crate::peer::PeerError;
use crate::share::RelPath;
use crate::share::{Entry, FileHash};
use crate::sync::counted;
use crate::text::{self, escape};
use crate::transfer::Downloaded;
pub use crate::units::{human_duration, human_size};

/// How a session's output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Tables and sentences.
    Human,
    /// One JSON document per command.
    Json,
}

/// How human output is laid out on the terminal at hand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    /// The terminal's width in columns; `None`: no limit (a pipe), nothing is shortened.
    pub width: Option<usize>,
    /// Whether to use ANSI colours and bold.
    pub colour: bool,
}

/// The text that shows `outcome` (without a trailing newline; empty for nothing to show),
/// with no width limit and no colour.
pub fn outcome(outcome: &Outcome, format: Format) -> String {
    outcome_with(outcome, format, Layout::default())
}

/// The text that shows `outcome`, laid out for `layout` (JSON ignores it).
pub fn outcome_with(outcome: &Outcome, format: Format, layout: Layout) -> String {
    match format {
        Format::Json => outcome_json(outcome)
            .and_then(|v| text::json(&v).ok())
            .unwrap_or_default(),
        Format::Human => outcome_human(outcome, layout),
    }
}

/// The text that shows a failed command.
pub fn error(message: &str, format: Format) -> String {
    error_with(message, format, Layout::default())
}

/// The text that shows a failed command, `error:` in red when colours are on. The message
/// is escaped: it often quotes a peer (its error message, a name).
pub fn error_with(message: &str, format: Format, layout: Layout) -> String {
    match format {
        Format::Json => text::json(&json!({ "error": message })).unwrap_or_default(),
        Format::Human if layout.colour => {
            format!("\x1b[1;31merror:\x1b[0m {}", escape(message))
        }
        Format::Human => format!("error: {}", escape(message)),
    }
}

/// The line that announces a background job that ended (`[1] done download tcp a.iso:
/// 4.0 MiB in 1.20s`), or failed with its error.
pub fn job_event(event: &JobEvent, layout: Layout) -> String {
    let JobEvent { status, result } = event;
    let (word, colour) = match result {
        Ok(Fetched::Files(summary)) if !summary.failed.is_empty() => ("failed", "31"),
        Ok(_) => ("done", "32"),
        Err(_) => ("failed", "31"),
    };
    let word = if layout.colour {
        format!("\x1b[{colour}m{word}\x1b[0m")
    } else {
        word.to_string()
    };
    let detail = match result {
        Ok(Fetched::File(d)) => format!(
            "{} in {:.2}s ({}/s){}",
            human_size(d.version.size),
            d.seconds,
            human_size((d.version.size as f64 / d.seconds.max(1e-6)) as u64),
            d.note
                .as_ref()
                .map(|n| format!("; note: {}", escape(n)))
                .unwrap_or_default()
        ),
        Ok(Fetched::Files(summary)) => {
            let mut text = summary_line(summary);
            for (name, why) in summary.failed.iter().take(3) {
                text.push_str(&format!("; {}: {}", escape(name.as_str()), escape(why)));
            }
            if summary.failed.len() > 3 {
                text.push_str(&format!("; {} more failed", summary.failed.len() - 3));
            }
            text
        }
        Err(e) => escape(&e.to_string()).into_owned(),
    };
    format!(
        "[{}] {word} {}: {detail}",
        status.id,
        escape(&status.command)
    )
}

fn outcome_json(outcome: &Outcome) -> Option<Value> {
    Some(match outcome {
        Outcome::Entries(entries) => Value::Array(entries.iter().map(entry_json).collect()),
        Outcome::Hash(hash) => hash_json(hash),
        Outcome::Hashes(hashes) => Value::Array(hashes.iter().map(hash_json).collect()),
        Outcome::Downloaded(d) => download_json(d),
        Outcome::DownloadedMany(summary) => summary_json(summary),
        Outcome::Listed { entries, .. } => Value::Array(entries.iter().map(entry_json).collect()),
        Outcome::Folder { folder, .. } => {
            json!({ "folder": remote::display_folder(folder.as_ref()) })
        }
        Outcome::History(records) => serde_json::to_value(records).unwrap_or(Value::Null),
        Outcome::Peer(addr) => json!({ "peer": addr }),
        Outcome::Peers(rows) => serde_json::to_value(rows).unwrap_or(Value::Null),
        Outcome::Help(text) => json!({ "help": text }),
        Outcome::TrashUsage { files, bytes } => {
            json!({ "trash": { "files": files, "bytes": bytes } })
        }
        Outcome::Trashed(items) => serde_json::to_value(items).unwrap_or(Value::Null),
        Outcome::Restored(item) => json!({ "restored": item }),
        Outcome::Sync(status) => serde_json::to_value(status).unwrap_or(Value::Null),
        Outcome::SyncRound(round) => sync_round_json(round),
        Outcome::Quit => return None,
        Outcome::Jobs(jobs) => Value::Array(jobs.iter().map(job_json).collect()),
        Outcome::Started(job) | Outcome::Killed(job) => job_json(job),
        Outcome::Waited(waited) => json!({ "waited": waited.count }),
    })
}

pub(super) fn entry_json(entry: &Entry) -> Value {
    json!({
        "name": entry.name,
        "size": entry.size,
        "mtime": entry.mtime,
        "type": entry.file_type,
    })
}

fn job_json(job: &JobStatus) -> Value {
    json!({
        "job": job.id,
        "command": job.command,
        "done": job.done,
        "total": job.total,
        "seconds": (job.seconds * 1000.0).round() / 1000.0,
    })
}

pub(super) fn hash_json(hash: &FileHash) -> Value {
    json!({
        "name": hash.name,
        "md5": hash.md5,
        "sha256": hash.sha256,
        "blake3": hash.blake3,
        "mtime": hash.mtime,
    })
}

fn download_json(d: &Downloaded) -> Value {
    let mut value = json!({
        "name": d.version.name,
        "size": d.version.size,
        "mtime": d.version.mtime,
        "md5": d.md5,
        "sha256": d.sha256,
        "blake3": d.version.blake3,
        "transport": d.transport,
        "path": d.path,
        "seconds": (d.seconds * 1000.0).round() / 1000.0,
    });
    value["transferred"] = json!(d.transferred);
    value["reused"] = json!(d.reused);
    if d.up_to_date {
        value["up_to_date"] = json!(true);
    }
    if let Some(resent) = d.resent {
        value["resent"] = json!(resent);
    }
    if let Some(note) = &d.note {
        value["note"] = json!(note);
    }
    value
}

/// The summary of a several-file download: `downloaded 12 files (3.4 MiB), 2 up to date,
/// 1 failed`.
pub fn summary_line(summary: &Summary) -> String {
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let mut text = format!(
        "downloaded {} file{} ({})",
        summary.downloaded,
        plural(summary.downloaded),
        human_size(summary.bytes)
    );
    if summary.up_to_date > 0 {
        text.push_str(&format!(", {} up to date", summary.up_to_date));
    }
    if !summary.failed.is_empty() {
        text.push_str(&format!(", {} failed", summary.failed.len()));
    }
    text
}

fn summary_json(summary: &Summary) -> Value {
    json!({
        "summary": {
            "downloaded": summary.downloaded,
            "bytes": summary.bytes,
            "up_to_date": summary.up_to_date,
            "failed": summary.failed.len(),
            "folders": summary.folders,
            "seconds": (summary.seconds * 1000.0).round() / 1000.0,
        }
    })
}

/// The line for one file of a several-file download as it ends. A failure's human line
/// is raw, to be shown as an error: [`error_with`] escapes it.
pub fn file_line(name: &RelPath, result: &Result<Downloaded, PeerError>, format: Format) -> String {
    match (format, result) {
        (Format::Json, Ok(d)) => text::json(&download_json(d)).unwrap_or_default(),
        (Format::Json, Err(e)) => {
            text::json(&json!({ "name": name, "error": e.to_string() })).unwrap_or_default()
        }
        (Format::Human, Ok(d)) if d.up_to_date => {
            format!("{} is up to date", escape(name.as_str()))
        }
        (Format::Human, Ok(d)) => format!(
            "downloaded {} ({})",
            escape(name.as_str()),
            human_size(d.version.size)
        ),
        (Format::Human, Err(e)) => format!("{}: {e}", name.as_str()),
    }
}

/// `ls`: names one per line, folders ending with `/`; `ls -l`: with mode, size and time.
/// Names are shown relative to the current remote folder.
fn listed(long: bool, folder: Option<&RelPath>, entries: &[Entry], layout: Layout) -> String {
    let name = |e: &Entry| {
        let shown = remote::relative(folder, &e.name);
        if e.is_dir() {
            format!("{shown}/")
        } else {
            shown
        }
    };
    if !long {
        return entries
            .iter()
            .map(|e| escape(&name(e)).into_owned())
            .collect::<Vec<_>>()
            .join("\n");
    }
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                mode_string(e),
                if e.is_dir() {
                    "-".to_string()
                } else {
                    human_size(e.size)
                },
                e.mtime.to_local_string(),
                name(e),
            ]
        })
        .collect::<Vec<_>>();
    table::render(
        &[
            Column::keep("MODE"),
            Column::right("SIZE"),
            Column::keep("MODIFIED"),
            Column::shrink("NAME", Fit::Path),
        ],
        &rows,
        layout.width,
        layout.colour,
    )
}

/// `drwxr-xr-x`, `-rw-r--r--`: the entry's kind and permission bits, as `ls -l` shows them.
fn mode_string(entry: &Entry) -> String {
    let mut text = String::from(if entry.is_dir() { "d" } else { "-" });
    for shift in [6, 3, 0] {
        let bits = (entry.mode >> shift) & 0o7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

/// What an empty index listing shows.
pub(super) const NO_ENTRIES: &str = "no matching entries";

/// What an empty `hash checkall` shows.
pub(super) const NO_FILES: &str = "no files";

fn outcome_human(outcome: &Outcome, layout: Layout) -> String {
    let table = |columns: &[Column], rows: Vec<Vec<String>>| {
        table::render(columns, &rows, layout.width, layout.colour)
    };
    match outcome {
        Outcome::Entries(entries) if entries.is_empty() => NO_ENTRIES.to_string(),
        Outcome::Entries(entries) => table(ENTRY_COLUMNS, entries.iter().map(entry_row).collect()),
        Outcome::Hash(hash) => hash_table(std::slice::from_ref(hash), layout),
        Outcome::Hashes(hashes) if hashes.is_empty() => NO_FILES.to_string(),
        Outcome::Hashes(hashes) => hash_table(hashes, layout),
        Outcome::DownloadedMany(summary) => summary_line(summary),
        Outcome::Listed {
            long,
            folder,
            entries,
        } => listed(*long, folder.as_ref(), entries, layout),
        Outcome::Folder { moved: true, .. } => String::new(),
        Outcome::Folder { folder, .. } => {
            escape(&remote::display_folder(folder.as_ref())).into_owned()
        }
        Outcome::Downloaded(d) if d.up_to_date => format!(
            "{} is up to date: this box already has the peer's version ({}); nothing changed",
            escape(d.version.name.as_str()),
            human_size(d.version.size),
        ),
        Outcome::Downloaded(d) => {
            let mut lines = vec![format!(
                "downloaded {} over {}: {} in {:.2}s ({}/s)",
                escape(d.version.name.as_str()),
                match d.transport {
                    crate::types::Transport::Tcp => "TCP",
                    crate::types::Transport::Udp => "UDP",
                },
                human_size(d.version.size),
                d.seconds,
                human_size((d.version.size as f64 / d.seconds.max(1e-6)) as u64),
            )];
            lines.push(table(
                &[
                    Column::shrink("NAME", Fit::Path),
                    Column::right("SIZE"),
                    Column::keep("MODIFIED"),
                    Column::keep("MD5"),
                ],
                vec![vec![
                    d.version.name.to_string(),
                    human_size(d.version.size),
                    d.version.mtime.to_local_string(),
                    d.md5.clone().unwrap_or_else(|| "-".to_string()),
                ]],
            ));
            if d.reused > 0 {
                lines.push(format!(
                    "fetched {}; {} found on this box (unchanged blocks, the same content elsewhere, or an interrupted download)",
                    human_size(d.transferred),
                    human_size(d.reused)
                ));
            }
            if let Some(resent) = d.resent {
                lines.push(format!("{resent} datagrams resent"));
            }
            if let Some(note) = &d.note {
                lines.push(format!("note: {}", escape(note)));
            }
            if let Some(old) = &d.replaced {
                lines.push(format!(
                    "previous version kept in {}",
                    escape(&old.display().to_string())
                ));
            }
            lines.join("\n")
        }
        Outcome::History(records) if records.is_empty() => "no requests yet".to_string(),
        Outcome::History(records) => table(
            &[
                Column::keep("TIME"),
                Column::keep("DIRECTION"),
                Column::keep("PEER"),
                Column::shrink("REQUEST", Fit::Middle),
                Column::shrink("RESULT", Fit::End),
            ],
            records
                .iter()
                .map(|r| {
                    vec![
                        r.time.to_local_string(),
                        match r.direction {
                            Direction::Made => "made".to_string(),
                            Direction::Served => "served".to_string(),
                        },
                        r.peer.clone(),
                        r.request.clone(),
                        r.outcome.clone(),
                    ]
                })
                .collect(),
        ),
        Outcome::Peer(Some(addr)) => format!("peer: {}", escape(addr)),
        Outcome::Peer(None) => {
            "no peer: use 'peer ID@HOST:PORT' or start with --peer ID@HOST:PORT".to_string()
        }
        Outcome::Peers(rows) if rows.is_empty() => {
            "no peers and no trusted boxes: 'peer ID@HOST:PORT' adds one".to_string()
        }
        Outcome::Peers(rows) => table(
            &[
                Column::keep(" "),
                Column::keep("ID"),
                Column::keep("TRUST"),
                Column::shrink("NAME", Fit::End),
                Column::shrink("ADDRESS", Fit::End),
            ],
            rows.iter()
                .map(|row| {
                    vec![
                        if row.current { "*" } else { " " }.to_string(),
                        row.id.to_string(),
                        row.trust.to_string(),
                        row.name.clone().unwrap_or_else(|| "-".to_string()),
                        row.addr.clone().unwrap_or_else(|| "-".to_string()),
                    ]
                })
                .collect(),
        ),
        Outcome::Help(text) => text.clone(),
        Outcome::TrashUsage { files, bytes } => format!(
            "trash: {} ({}) in .boxsync/trash; 'trash list' shows them",
            crate::sync::counted(*files as u64, "version"),
            human_size(*bytes)
        ),
        Outcome::Trashed(items) if items.is_empty() => "nothing in the trash".to_string(),
        Outcome::Trashed(items) => table(
            &[
                Column::shrink("PATH", Fit::Middle),
                Column::keep("VERSION"),
                Column::keep("TRASHED (UTC)"),
                Column::keep("SIZE"),
            ],
            items
                .iter()
                .map(|item| {
                    vec![
                        item.path.to_string(),
                        item.version.to_string(),
                        item.trashed.clone(),
                        human_size(item.size),
                    ]
                })
                .collect(),
        ),
        Outcome::Restored(item) => format!(
            "restored {} (version {}, trashed {} UTC, {}); what was there is in the trash",
            escape(item.path.as_str()),
            item.version,
            item.trashed,
            human_size(item.size)
        ),
        Outcome::Sync(status) => sync_status(status, layout),
        Outcome::SyncRound(round) => sync_round(round),
        Outcome::Quit => String::new(),
        Outcome::Jobs(jobs) if jobs.is_empty() => "no jobs".to_string(),
        Outcome::Jobs(jobs) => table(
            &[
                Column::keep("JOB"),
                Column::right("DONE"),
                Column::right("SIZE"),
                Column::right("%"),
                Column::right("RATE"),
                Column::right("ETA"),
                Column::shrink("COMMAND", Fit::Middle),
            ],
            jobs.iter().map(job_row).collect(),
        ),
        Outcome::Started(job) => format!("[{}] {}", job.id, escape(&job.command)),
        Outcome::Killed(job) => format!("[{}] killed {}", job.id, escape(&job.command)),
        Outcome::Waited(waited) if waited.count == 0 => "no jobs".to_string(),
        Outcome::Waited(waited) => waited
            .ended
            .iter()
            .map(|event| job_event(event, layout))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// `{"round": {"finished", "peers": [...]}}`: per peer its counts, its `error`, or
/// `"tried": false`.
fn sync_round_json(round: &crate::shell::session::SyncRound) -> Value {
    use crate::shell::session::PeerRoundResult;
    let peers: Vec<Value> = round
        .peers
        .iter()
        .map(|p| match &p.result {
            PeerRoundResult::Done(c) => json!({
                "peer": p.peer,
                "received": c.received,
                "moved": c.moved,
                "deleted": c.deleted,
                "conflicts": c.conflicts,
                "other": c.other,
                "failed": c.failed,
            }),
            PeerRoundResult::Failed(error) => json!({ "peer": p.peer, "error": error }),
            PeerRoundResult::NotTried => json!({ "peer": p.peer, "tried": false }),
        })
        .collect();
    json!({ "round": { "finished": round.finished, "peers": peers } })
}

/// What `sync now`'s round did, a line per peer: `sync [peer]: received 2 files, 1
/// conflict` or `nothing to do`.
fn sync_round(round: &crate::shell::session::SyncRound) -> String {
    use crate::shell::session::PeerRoundResult;
    let mut lines: Vec<String> = round
        .peers
        .iter()
        .map(|p| {
            let said = match &p.result {
                PeerRoundResult::Done(counts) => round_counts(counts),
                PeerRoundResult::Failed(error) => format!("failed: {}", escape(error)),
                PeerRoundResult::NotTried if round.finished => {
                    "not tried in this round (unreachable lately, it dials this box, or busy with an earlier round; 'sync status' says which)".to_string()
                }
                PeerRoundResult::NotTried => "still going".to_string(),
            };
            format!("sync [{}]: {said}", escape(&p.peer))
        })
        .collect();
    if lines.is_empty() {
        lines.push("sync: no peers to sync with yet".to_string());
    }
    if !round.finished {
        lines.push(format!(
            "the round is still running after {}s; 'sync status' shows how it goes",
            crate::shell::session::SYNC_NOW_WAIT.as_secs()
        ));
    }
    lines.join("\n")
}

/// A round's counts in words, each with its noun in the right number.
fn round_counts(counts: &crate::sync::RoundCounts) -> String {
    if counts.is_empty() {
        return "nothing to do".to_string();
    }
    let n = |count: usize| count as u64;
    let mut parts = Vec::new();
    if counts.received > 0 {
        parts.push(format!("received {}", counted(n(counts.received), "file")));
    }
    if counts.moved > 0 {
        parts.push(format!("moved {}", counted(n(counts.moved), "file")));
    }
    if counts.deleted > 0 {
        parts.push(format!(
            "deleted {} (kept in .boxsync/trash)",
            counted(n(counts.deleted), "file")
        ));
    }
    if counts.conflicts > 0 {
        parts.push(counted(n(counts.conflicts), "conflict"));
    }
    if counts.other > 0 {
        parts.push(counted(n(counts.other), "other change"));
    }
    if counts.failed > 0 {
        parts.push(format!(
            "{} failed (retried next round)",
            counted(n(counts.failed), "action")
        ));
    }
    parts.join(", ")
}

/// `sync status` as text: the engine's state, a table of peers, then conflicts and errors.
fn sync_status(status: &crate::sync::SyncStatus, layout: Layout) -> String {
    let mut lines = vec![format!(
        "auto-sync {} (a round every {}s, {}; {})",
        if status.enabled { "on" } else { "off" },
        status.period_seconds,
        if status.watching {
            format!(
                "watching for changes, full rescan every {}s",
                status.rescan_seconds
            )
        } else {
            "not watching: each round reads the whole folder".to_string()
        },
        counted(status.rounds, "round")
    )];
    if let Some(notice) = &status.notice {
        lines.push(format!("note: {}", escape(notice)));
    }
    let rows: Vec<Vec<String>> = status
        .peers
        .iter()
        .map(|p| {
            vec![
                p.peer.clone(),
                p.state.clone(),
                match p.dialed_by {
                    Some("peer") => "dialed in".to_string(),
                    Some(_) => "dialed out".to_string(),
                    None => "none".to_string(),
                },
                p.transport.name().to_string(),
                p.last_sync
                    .map(|t| t.to_local_string())
                    .unwrap_or_else(|| "never".to_string()),
                p.pending.to_string(),
                p.conflicts.len().to_string(),
                p.errors.len().to_string(),
            ]
        })
        .collect();
    lines.push(table::render(
        &[
            Column::keep("PEER"),
            Column::keep("STATE"),
            Column::keep("SESSION"),
            Column::keep("VIA"),
            Column::keep("LAST SYNC"),
            Column::right("PENDING"),
            Column::right("CONFLICTS"),
            Column::right("ERRORS"),
        ],
        &rows,
        layout.width,
        layout.colour,
    ));
    if !status.transfers.is_empty() {
        lines.push(transfers_table(&status.transfers, layout));
    }
    for peer in &status.peers {
        let addr = escape(&peer.peer);
        let seen = peer
            .address
            .as_deref()
            .map_or("no address known".to_string(), |a| {
                format!("at {}", escape(a))
            });
        let pulled = peer.last_pulled_by_peer.map_or(
            "it has not pulled from this box since it started".to_string(),
            |t| format!("it last pulled from this box at {}", t.to_local_string()),
        );
        lines.push(format!("{addr}: {seen}; {pulled}"));
        if peer.fetched_bytes + peer.reused_bytes > 0 {
            lines.push(format!(
                "{addr}: received {} since start: {} fetched, {} found on this box",
                human_size(peer.fetched_bytes + peer.reused_bytes),
                human_size(peer.fetched_bytes),
                human_size(peer.reused_bytes)
            ));
        }
        for conflict in &peer.conflicts {
            lines.push(format!(
                "conflict ({addr}): {}",
                escape(&conflict.to_string())
            ));
        }
        for error in &peer.errors {
            lines.push(format!("error ({addr}): {}", escape(error)));
        }
    }
    if status.not_shared_total > 0 {
        lines.push(format!(
            "not shared: {} of this box's folder",
            counted(status.not_shared_total as u64, "path")
        ));
        for item in &status.not_shared {
            lines.push(format!(
                "  {}: {}",
                escape(&item.path),
                escape(&item.reason.to_string())
            ));
        }
        if status.not_shared_total > status.not_shared.len() {
            lines.push(format!(
                "  and {} more",
                status.not_shared_total - status.not_shared.len()
            ));
        }
    }
    lines.join("\n")
}

/// The files sync is receiving, a row each: the file, its peer, bytes done of its size, the
/// mean rate and the time left at it. Fits 80 columns (names lose their middle first).
fn transfers_table(transfers: &[crate::sync::TransferStatus], layout: Layout) -> String {
    let rows: Vec<Vec<String>> = transfers
        .iter()
        .map(|t| {
            vec![
                t.name.to_string(),
                t.peer.clone(),
                human_size(t.done),
                human_size(t.total),
                match t.total {
                    0 => "-".to_string(),
                    total => format!("{}%", t.done.min(total) * 100 / total),
                },
                crate::units::human_rate(t.bytes_per_second),
                t.eta_seconds
                    .map_or("-".to_string(), |eta| human_duration(eta as f64)),
            ]
        })
        .collect();
    table::render(
        &[
            Column::shrink("RECEIVING", Fit::Path),
            Column::shrink("FROM", Fit::Middle),
            Column::right("DONE"),
            Column::right("SIZE"),
            Column::right("%"),
            Column::right("RATE"),
            Column::right("ETA"),
        ],
        &rows,
        layout.width,
        layout.colour,
    )
}

/// A job's row: bytes done and in all, percentage, mean rate and the time left at it.
fn job_row(job: &JobStatus) -> Vec<String> {
    let rate = job.done as f64 / job.seconds.max(1e-3);
    let (size, percent, eta) = if job.total == 0 {
        ("?".to_string(), "-".to_string(), "-".to_string())
    } else {
        let left = job.total.saturating_sub(job.done) as f64;
        (
            human_size(job.total),
            format!("{}%", job.done * 100 / job.total),
            if rate > 0.0 {
                human_duration(left / rate)
            } else {
                "-".to_string()
            },
        )
    };
    vec![
        format!("[{}]", job.id),
        human_size(job.done),
        size,
        percent,
        format!("{}/s", human_size(rate as u64)),
        eta,
        job.command.clone(),
    ]
}

fn hash_table(hashes: &[FileHash], layout: Layout) -> String {
    table::render(
        HASH_COLUMNS,
        &hashes.iter().map(hash_row).collect::<Vec<_>>(),
        layout.width,
        layout.colour,
    )
}

/// The columns of an index listing.
pub(super) const ENTRY_COLUMNS: &[Column] = &[
    Column::shrink("NAME", Fit::Path),
    Column::right("SIZE"),
    Column::keep("MODIFIED"),
    Column::shrink("TYPE", Fit::End),
];

/// An entry's row: folders end with `/` and have no size.
pub(super) fn entry_row(e: &Entry) -> Vec<String> {
    vec![
        if e.is_dir() {
            format!("{}/", e.name)
        } else {
            e.name.to_string()
        },
        if e.is_dir() {
            "-".to_string()
        } else {
            human_size(e.size)
        },
        e.mtime.to_local_string(),
        e.file_type.to_string(),
    ]
}

/// The columns of `hash verify` and `hash checkall`.
pub(super) const HASH_COLUMNS: &[Column] = &[
    Column::shrink("NAME", Fit::Path),
    Column::keep("MD5"),
    Column::keep("SHA-256"),
    Column::keep("MODIFIED"),
];

/// A file's row of hashes.
pub(super) fn hash_row(h: &FileHash) -> Vec<String> {
    vec![
        h.name.to_string(),
        h.md5.as_deref().unwrap_or("-").to_string(),
        h.sha256.as_deref().unwrap_or("-").to_string(),
        h.mtime.to_local_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::jobs::Waited;

    /// A transfer in flight from `peer`: 1.2 GiB of 2.0 GiB at 41 MiB/s.
    fn transfer(name: crate::share::RelPath, peer: &str) -> crate::sync::TransferStatus {
        crate::sync::TransferStatus {
            peer: peer.to_string(),
            name,
            done: 1230 << 20,
            total: 2 << 30,
            bytes_per_second: 41 << 20,
            eta_seconds: Some(20),
            started: crate::time::Timestamp::now(),
            seconds: 30.0,
            id: 0,
        }
    }

    /// `sync status` lists the transfers in flight under the peers, with bytes done of the
    /// size, the rate and the time left; at 80 columns a long name loses its middle and the
    /// numbers stay whole.
    #[test]
    fn sync_status_lists_transfers_within_80_columns() {
        let long = crate::share::RelPath::parse(
            "videos/holidays/2025/the very long name of a family film.mkv",
        )
        .unwrap();
        let status = crate::sync::SyncStatus {
            enabled: true,
            peers: vec![crate::sync::PeerStatus {
                peer: "hub.example.org:7002".to_string(),
                state: "syncing".to_string(),
                ..Default::default()
            }],
            transfers: vec![transfer(long, "hub.example.org:7002")],
            ..Default::default()
        };
        let text = sync_status(
            &status,
            Layout {
                width: Some(80),
                colour: false,
            },
        );
        let table: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("RECEIVING"))
            .take(2)
            .collect();
        assert_eq!(table.len(), 2, "{text}");
        for line in &table {
            assert!(
                unicode_width::UnicodeWidthStr::width(*line) <= 80,
                "{line:?} in\n{text}"
            );
        }
        let header = table[0];
        for column in ["FROM", "DONE", "SIZE", "%", "RATE", "ETA"] {
            assert!(header.contains(column), "{header}");
        }
        let row = text
            .lines()
            .find(|l| l.ends_with("20s"))
            .unwrap_or_else(|| panic!("no transfer row in\n{text}"));
        for cell in ["film.mkv", "1.2 GiB", "2.0 GiB", "60%", "41.0 MiB/s"] {
            assert!(row.contains(cell), "{row}");
        }
        let json = outcome(&Outcome::Sync(status), Format::Json);
        let value: Value = serde_json::from_str(&json).unwrap();
        let t = &value["transfers"][0];
        assert_eq!(t["done"], 1230u64 << 20, "{json}");
        assert_eq!(t["total"], 2u64 << 30, "{json}");
        assert_eq!(t["bytes_per_second"], 41u64 << 20, "{json}");
        assert_eq!(t["eta_seconds"], 20, "{json}");
        assert_eq!(t["peer"], "hub.example.org:7002", "{json}");
        assert!(t["name"].as_str().unwrap().ends_with("film.mkv"), "{json}");
    }

    /// `sync status` after one round says "1 round".
    #[test]
    fn sync_status_counts_rounds() {
        let status = crate::sync::SyncStatus {
            enabled: true,
            period_seconds: 10,
            rescan_seconds: 3600,
            watching: true,
            rounds: 1,
            ..Default::default()
        };
        let text = sync_status(&status, Layout::default());
        assert!(
            text.starts_with(
                "auto-sync on (a round every 10s, watching for changes, full rescan every 3600s; 1 round)"
            ),
            "{text}"
        );
    }

    /// A round's counts read as words with the right plurals, and an empty one as
    /// "nothing to do".
    #[test]
    fn round_counts_in_words() {
        let counts = crate::sync::RoundCounts {
            received: 1,
            deleted: 2,
            conflicts: 1,
            ..Default::default()
        };
        assert_eq!(
            round_counts(&counts),
            "received 1 file, deleted 2 files (kept in .boxsync/trash), 1 conflict"
        );
        assert_eq!(
            round_counts(&crate::sync::RoundCounts::default()),
            "nothing to do"
        );
    }

    /// Sizes switch unit at 1024 and keep one decimal.
    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    /// Durations keep two units at most.
    #[test]
    fn durations() {
        assert_eq!(human_duration(4.4), "4s");
        assert_eq!(human_duration(185.0), "3m05s");
        assert_eq!(human_duration(7800.0), "2h10m");
    }

    /// Errors are red only with colours; JSON errors never are.
    #[test]
    fn coloured_errors() {
        let colour = Layout {
            width: None,
            colour: true,
        };
        assert_eq!(error("x", Format::Human), "error: x");
        assert!(error_with("x", Format::Human, colour).contains("\x1b[1;31m"));
        assert_eq!(error_with("x", Format::Json, colour), r#"{"error":"x"}"#);
    }

    /// A peer's text, hostile in every way a terminal can be attacked: title, screen
    /// clear, clipboard write, carriage return, new line, 8-bit CSI, DEL, bidi override.
    const HOSTILE: &str = "t\x1b]0;pwned\x07c\x1b[2Jo\x1b]52;c;ZXZpbA==\x07r\rn\nfake row\u{9b}31md\x7fb\u{202e}txt.exe";

    /// Whether `text` holds nothing a terminal acts on or reorders (the escapes `render`
    /// writes itself for colours aside, which these tests turn off).
    fn inert(text: &str) -> bool {
        text.chars().all(|c| {
            c == '\n' || !(c.is_control() || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        })
    }

    fn name() -> crate::share::RelPath {
        crate::share::RelPath::parse(&format!("dir/{HOSTILE}")).expect("a valid path")
    }

    fn job() -> JobStatus {
        JobStatus {
            id: 1,
            command: format!("download tcp {HOSTILE}"),
            done: 1,
            total: 2,
            seconds: 1.0,
        }
    }

    fn downloaded() -> Downloaded {
        Downloaded {
            version: crate::types::FileVersion {
                name: name(),
                blake3: HOSTILE.to_string(),
                size: 3,
                mtime: crate::time::Timestamp::now(),
                mode: 0o644,
            },
            sha256: Some(HOSTILE.to_string()),
            md5: Some(HOSTILE.to_string()),
            transport: crate::types::Transport::Tcp,
            path: std::path::PathBuf::from(HOSTILE),
            seconds: 1.0,
            replaced: Some(std::path::PathBuf::from(HOSTILE)),
            resent: None,
            note: Some(HOSTILE.to_string()),
            transferred: 3,
            reused: 0,
            up_to_date: false,
        }
    }

    fn peer_error() -> crate::peer::PeerError {
        crate::peer::PeerError::Remote {
            kind: crate::protocol::ErrorKind::NotFound,
            message: HOSTILE.to_string(),
        }
    }

    /// Every outcome that quotes a peer, and every error, shows its text escaped, in
    /// human output and in JSON, at any width.
    #[test]
    fn peer_text_never_reaches_the_terminal_raw() {
        let status = crate::sync::SyncStatus {
            notice: Some(HOSTILE.to_string()),
            peers: vec![crate::sync::PeerStatus {
                peer: HOSTILE.to_string(),
                transport: crate::types::Transport::Tcp,
                last_sync: None,
                last_attempt: None,
                pending: 0,
                conflicts: vec![crate::sync::Conflict {
                    path: name(),
                    copy: name(),
                }],
                errors: vec![HOSTILE.to_string()],
                failure: None,
                address: Some(HOSTILE.to_string()),
                state: HOSTILE.to_string(),
                ..Default::default()
            }],
            transfers: vec![transfer(name(), HOSTILE)],
            ..Default::default()
        };
        let outcomes = [
            Outcome::Entries(vec![Entry {
                name: name(),
                size: 1,
                mtime: crate::time::Timestamp::now(),
                file_type: HOSTILE.into(),
                mode: 0o644,
            }]),
            Outcome::Hash(FileHash {
                name: name(),
                size: 1,
                blake3: HOSTILE.to_string().into(),
                sha256: Some(HOSTILE.to_string().into()),
                md5: Some(HOSTILE.to_string().into()),
                mtime: crate::time::Timestamp::now(),
            }),
            Outcome::Downloaded(downloaded()),
            Outcome::Listed {
                long: false,
                folder: Some(crate::share::RelPath::parse("dir").expect("a path")),
                entries: vec![Entry {
                    name: name(),
                    size: 1,
                    mtime: crate::time::Timestamp::now(),
                    file_type: "directory".into(),
                    mode: 0o755,
                }],
            },
            Outcome::Listed {
                long: true,
                folder: None,
                entries: vec![Entry {
                    name: name(),
                    size: 1,
                    mtime: crate::time::Timestamp::now(),
                    file_type: HOSTILE.into(),
                    mode: 0o644,
                }],
            },
            Outcome::Folder {
                folder: Some(name()),
                moved: false,
            },
            Outcome::History(vec![crate::history::HistoryRecord {
                time: crate::time::Timestamp::now(),
                direction: Direction::Served,
                peer: HOSTILE.to_string(),
                request: format!("hash verify {HOSTILE}"),
                outcome: HOSTILE.to_string(),
            }]),
            Outcome::Peer(Some(HOSTILE.to_string())),
            Outcome::Sync(status),
            Outcome::Jobs(vec![job()]),
            Outcome::Started(job()),
            Outcome::Killed(job()),
            Outcome::Waited(Waited {
                count: 2,
                ended: vec![
                    JobEvent {
                        status: job(),
                        result: Ok(Fetched::File(downloaded())),
                    },
                    JobEvent {
                        status: job(),
                        result: Err(peer_error().into()),
                    },
                    JobEvent {
                        status: job(),
                        result: Ok(Fetched::Files(Summary {
                            failed: vec![(name(), HOSTILE.to_string())],
                            ..Summary::default()
                        })),
                    },
                ],
            }),
        ];
        for outcome in &outcomes {
            for width in [None, Some(40), Some(200)] {
                let layout = Layout {
                    width,
                    colour: false,
                };
                let text = outcome_with(outcome, Format::Human, layout);
                assert!(inert(&text), "{outcome:?} at {width:?}:\n{text}");
                assert!(text.contains(r"\x1b") || width == Some(40), "{text}");
            }
            let json = outcome_with(outcome, Format::Json, Layout::default());
            assert!(inert(&json) && !json.contains('\n'), "{json}");
        }
        for format in [Format::Human, Format::Json] {
            let text = error(&peer_error().to_string(), format);
            assert!(inert(&text), "{text}");
        }
        let text = error(HOSTILE, Format::Human);
        assert!(
            text.starts_with(r"error: t\x1b]0;pwned\x07c\x1b[2J"),
            "{text}"
        );
        assert!(text.contains(r"\r") && text.contains(r"\n") && text.contains(r"\u{202e}"));
    }

    /// Each file of a set gets a line naming it escaped, in human and JSON form; the summary
    /// counts what happened, leaving out the parts that did not.
    #[test]
    fn file_lines_and_summaries() {
        let ok: Result<Downloaded, PeerError> = Ok(downloaded());
        let failed: Result<Downloaded, PeerError> = Err(peer_error());
        for result in [&ok, &failed] {
            for format in [Format::Human, Format::Json] {
                let mut line = file_line(&name(), result, format);
                if result.is_err() && format == Format::Human {
                    line = error(&line, format);
                }
                assert!(inert(&line) && !line.contains('\n'), "{line}");
            }
        }
        assert!(file_line(&name(), &ok, Format::Human).starts_with("downloaded dir/t\\x1b"));
        let summary = Summary {
            downloaded: 12,
            bytes: 3 << 20,
            up_to_date: 0,
            failed: vec![(name(), "gone".into())],
            ..Summary::default()
        };
        assert_eq!(
            summary_line(&summary),
            "downloaded 12 files (3.0 MiB), 1 failed"
        );
        let one = Summary {
            downloaded: 1,
            up_to_date: 2,
            ..Summary::default()
        };
        assert_eq!(summary_line(&one), "downloaded 1 file (0 B), 2 up to date");
    }

    /// A listing with an escaped name stays aligned: widths count the escaped text.
    #[test]
    fn escaped_rows_stay_aligned() {
        let entry = |name: &str| Entry {
            name: crate::share::RelPath::parse(name).expect("a valid path"),
            size: 1,
            mtime: crate::time::Timestamp::now(),
            file_type: "text/plain".into(),
            mode: 0o644,
        };
        let text = outcome(
            &Outcome::Entries(vec![entry("a\x1b[2J.txt"), entry("plain.txt")]),
            Format::Human,
        );
        let sizes: Vec<usize> = text.lines().map(|l| l.find(" B").unwrap_or(0)).collect();
        assert_eq!(sizes[1], sizes[2], "{text}");
        assert!(text.contains(r"a\x1b[2J.txt"), "{text}");
    }
}
