//! Turning command outcomes into text: aligned tables for people, one JSON document per
//! line for programs.

use serde_json::{Value, json};
use unicode_width::UnicodeWidthStr;

use super::session::Outcome;
use crate::history::Direction;
use crate::share::{Entry, FileHash};
use crate::transfer::Downloaded;

/// How a session's output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Tables and sentences.
    Human,
    /// One JSON document per command.
    Json,
}

/// The text that shows `outcome` (without a trailing newline; empty for nothing to show).
pub fn outcome(outcome: &Outcome, format: Format) -> String {
    match format {
        Format::Json => outcome_json(outcome)
            .map(|v| v.to_string())
            .unwrap_or_default(),
        Format::Human => outcome_human(outcome),
    }
}

/// The text that shows a failed command.
pub fn error(message: &str, format: Format) -> String {
    match format {
        Format::Json => json!({ "error": message }).to_string(),
        Format::Human => format!("error: {message}"),
    }
}

fn outcome_json(outcome: &Outcome) -> Option<Value> {
    Some(match outcome {
        Outcome::Entries(entries) => Value::Array(entries.iter().map(entry_json).collect()),
        Outcome::Hash(hash) => hash_json(hash),
        Outcome::Hashes(hashes) => Value::Array(hashes.iter().map(hash_json).collect()),
        Outcome::Downloaded(d) => download_json(d),
        Outcome::History(records) => serde_json::to_value(records).unwrap_or(Value::Null),
        Outcome::Peer(addr) => json!({ "peer": addr }),
        Outcome::Help(text) => json!({ "help": text }),
        Outcome::Sync(status) => serde_json::to_value(status).unwrap_or(Value::Null),
        Outcome::Quit => return None,
    })
}

fn entry_json(entry: &Entry) -> Value {
    json!({
        "name": entry.name,
        "size": entry.size,
        "mtime": entry.mtime,
        "type": entry.file_type,
    })
}

fn hash_json(hash: &FileHash) -> Value {
    json!({
        "name": hash.name,
        "md5": hash.md5,
        "sha256": hash.sha256,
        "mtime": hash.mtime,
    })
}

fn download_json(d: &Downloaded) -> Value {
    let mut value = json!({
        "name": d.name,
        "size": d.size,
        "mtime": d.mtime,
        "md5": d.md5,
        "sha256": d.sha256,
        "transport": d.transport,
        "path": d.path,
        "seconds": (d.seconds * 1000.0).round() / 1000.0,
    });
    if let Some(resent) = d.resent {
        value["resent"] = json!(resent);
    }
    if let Some(note) = &d.note {
        value["note"] = json!(note);
    }
    value
}

fn outcome_human(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Entries(entries) if entries.is_empty() => "no matching entries".to_string(),
        Outcome::Entries(entries) => table(
            &["NAME", "SIZE", "MODIFIED", "TYPE"],
            &[Align::Left, Align::Right, Align::Left, Align::Left],
            entries
                .iter()
                .map(|e| {
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
                        e.file_type.clone(),
                    ]
                })
                .collect(),
        ),
        Outcome::Hash(hash) => hash_table(std::slice::from_ref(hash)),
        Outcome::Hashes(hashes) if hashes.is_empty() => "no files".to_string(),
        Outcome::Hashes(hashes) => hash_table(hashes),
        Outcome::Downloaded(d) => {
            let mut lines = vec![format!(
                "downloaded {} over {}: {} in {:.2}s ({}/s)",
                d.name,
                match d.transport {
                    crate::transfer::Transport::Tcp => "TCP",
                    crate::transfer::Transport::Udp => "UDP",
                },
                human_size(d.size),
                d.seconds,
                human_size((d.size as f64 / d.seconds.max(1e-6)) as u64),
            )];
            lines.push(table(
                &["NAME", "SIZE", "MODIFIED", "MD5"],
                &[Align::Left, Align::Right, Align::Left, Align::Left],
                vec![vec![
                    d.name.to_string(),
                    human_size(d.size),
                    d.mtime.to_local_string(),
                    d.md5.clone(),
                ]],
            ));
            if let Some(resent) = d.resent {
                lines.push(format!("{resent} datagrams resent"));
            }
            if let Some(note) = &d.note {
                lines.push(format!("note: {note}"));
            }
            if let Some(old) = &d.replaced {
                lines.push(format!("previous version kept in {}", old.display()));
            }
            lines.join("\n")
        }
        Outcome::History(records) if records.is_empty() => "no requests yet".to_string(),
        Outcome::History(records) => table(
            &["TIME", "", "PEER", "REQUEST", "RESULT"],
            &[Align::Left; 5],
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
        Outcome::Peer(Some(addr)) => format!("peer: {addr}"),
        Outcome::Peer(None) => "no peer: use 'peer HOST:PORT' or start with --peer".to_string(),
        Outcome::Help(text) => text.clone(),
        Outcome::Sync(status) => sync_status(status),
        Outcome::Quit => String::new(),
    }
}

fn sync_status(status: &crate::sync::SyncStatus) -> String {
    let mut lines = vec![format!(
        "auto-sync {} (rescan every {}s, {}; {} rounds)",
        if status.enabled { "on" } else { "off" },
        status.period_seconds,
        if status.watching {
            "watching for changes"
        } else {
            "not watching: changes wait for the rescan"
        },
        status.rounds
    )];
    if let Some(notice) = &status.notice {
        lines.push(format!("note: {notice}"));
    }
    lines.push(table(
        &["PEER", "VIA", "LAST SYNC", "PENDING", "CONFLICTS", "ERRORS"],
        &[
            Align::Left,
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
        ],
        status
            .peers
            .iter()
            .map(|p| {
                vec![
                    p.peer.clone(),
                    p.transport.clone(),
                    p.last_sync
                        .map(|t| t.to_local_string())
                        .unwrap_or_else(|| "never".to_string()),
                    p.pending.to_string(),
                    p.conflicts.len().to_string(),
                    p.errors.len().to_string(),
                ]
            })
            .collect(),
    ));
    for peer in &status.peers {
        for conflict in &peer.conflicts {
            lines.push(format!("conflict ({}): {conflict}", peer.peer));
        }
        for error in &peer.errors {
            lines.push(format!("error ({}): {error}", peer.peer));
        }
    }
    lines.join("\n")
}

fn hash_table(hashes: &[FileHash]) -> String {
    table(
        &["NAME", "MD5", "SHA-256", "MODIFIED"],
        &[Align::Left; 4],
        hashes
            .iter()
            .map(|h| {
                vec![
                    h.name.to_string(),
                    h.md5.clone(),
                    h.sha256.clone(),
                    h.mtime.to_local_string(),
                ]
            })
            .collect(),
    )
}

/// Column alignment.
#[derive(Debug, Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// An aligned table with a header row; widths count terminal columns, not bytes.
fn table(header: &[&str], align: &[Align], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.width());
        }
    }
    let header_row: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    std::iter::once(&header_row)
        .chain(rows.iter())
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .zip(align)
                .map(|((cell, width), align)| {
                    let pad = " ".repeat(width - cell.width());
                    match align {
                        Align::Left => format!("{cell}{pad}"),
                        Align::Right => format!("{pad}{cell}"),
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sizes as people read them: `512 B`, `1.5 KiB`, `3.0 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes switch unit at 1024 and keep one decimal.
    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    /// Columns line up by display width, even with wide characters.
    #[test]
    fn aligns_wide_characters() {
        let text = table(
            &["NAME", "SIZE"],
            &[Align::Left, Align::Right],
            vec![
                vec!["日本.txt".into(), "1 B".into()],
                vec!["a".into(), "10 B".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1].width(), lines[2].width());
    }
}
