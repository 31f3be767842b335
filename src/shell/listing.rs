//! Listings shown while they arrive (`index ...`, `hash checkall`): each batch from the
//! peer is rendered and written as it comes, so that the shell holds one batch, never the
//! whole listing, and the first rows show at once; and the [`Gate`] at which the
//! interactive shell asks before it shows a very long listing.
//!
//! Human output is the table [`super::render`] draws for the whole listing, written batch
//! by batch ([`TableStream`]: columns sized by the first batch, widened by later wider
//! cells). JSON output is the same single-line array as before, written piece by piece.
//! Text from the peer is escaped exactly as in the collected tables and JSON.

use super::render::{self, Format, Layout};
use super::session::{Batch, ListingKind};
use super::table::TableStream;
use crate::text;

/// Entries the interactive shell shows of one listing before it asks whether to show the
/// rest: a screenful is a few dozen lines, and past ten thousand nobody reads a listing on
/// a terminal (a pipe or `-c` is the way, and those never ask).
pub const ASK_OVER: usize = 10_000;

/// A listing being written: what came before decides how the next batch begins.
pub struct ListingView {
    /// Human or JSON.
    format: Format,
    /// The human table, sized as its batches come.
    table: TableStream,
    /// What an empty listing shows.
    empty: &'static str,
    /// Items written so far.
    shown: usize,
    /// JSON only: whether the array was opened (`[` written).
    opened: bool,
}

impl ListingView {
    /// A view of a listing of `kind`, nothing written yet. `layout` is read once: the
    /// table keeps the terminal width it started with.
    pub fn new(kind: &ListingKind, format: Format, layout: Layout) -> ListingView {
        let (columns, empty) = match kind {
            ListingKind::Entries(_) => (render::ENTRY_COLUMNS, render::NO_ENTRIES),
            ListingKind::Hashes => (render::HASH_COLUMNS, render::NO_FILES),
        };
        ListingView {
            format,
            table: TableStream::new(columns, layout.width, layout.colour),
            empty,
            shown: 0,
            opened: false,
        }
    }

    /// How many items were written.
    pub fn shown(&self) -> usize {
        self.shown
    }

    /// The text that shows `batch` after what was written before: human lines each ending
    /// with a newline (the header first, with the first batch), or the JSON array
    /// continued on its line. Empty for an empty batch.
    pub fn batch(&mut self, batch: &Batch) -> String {
        if batch.is_empty() {
            return String::new();
        }
        self.shown += batch.len();
        match self.format {
            Format::Human => {
                let rows: Vec<Vec<String>> = match batch {
                    Batch::Entries(items) => items.iter().map(render::entry_row).collect(),
                    Batch::Hashes(items) => items.iter().map(render::hash_row).collect(),
                };
                let mut out = self.table.rows(&rows);
                out.push('\n');
                out
            }
            Format::Json => {
                let values: Vec<serde_json::Value> = match batch {
                    Batch::Entries(items) => items.iter().map(render::entry_json).collect(),
                    Batch::Hashes(items) => items.iter().map(render::hash_json).collect(),
                };
                let mut out = String::new();
                for value in &values {
                    out.push(if self.opened { ',' } else { '[' });
                    self.opened = true;
                    // Serializing a `Value` of strings and numbers cannot fail.
                    out.push_str(&text::json(value).unwrap_or_else(|_| "null".into()));
                }
                out
            }
        }
    }

    /// The text that ends the listing. Complete: JSON closes its array (`[]` if nothing
    /// came) and the line; an empty human listing says so. Cut short (an error, Ctrl-C,
    /// or the person declined), only a JSON array already opened is closed, so that its
    /// line stays valid JSON (the error document follows on the next line).
    pub fn finish(&mut self, complete: bool) -> String {
        match self.format {
            Format::Json if self.opened => {
                self.opened = false;
                "]\n".to_string()
            }
            Format::Json if complete => "[]\n".to_string(),
            Format::Human if complete && self.shown == 0 => format!("{}\n", self.empty),
            _ => String::new(),
        }
    }
}

/// When the interactive shell asks before showing more of a listing: once, as the entry
/// after the threshold arrives (the count is known only while the listing streams; the
/// peer does not say it beforehand). A listing of exactly the threshold never asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    /// Items shown before asking; `None`: never asks (scripts, `--json`, answered yes).
    limit: Option<usize>,
    /// Items let through so far.
    passed: usize,
}

impl Gate {
    /// A gate that asks after `limit` items (`None` or `Some(0)`: never).
    pub fn new(limit: Option<usize>) -> Gate {
        Gate {
            limit: limit.filter(|&n| n > 0),
            passed: 0,
        }
    }

    /// How many of `n` more items may be shown now: all of them, or fewer, after which
    /// the question is due before the rest.
    pub fn room(&mut self, n: usize) -> usize {
        let room = match self.limit {
            None => n,
            Some(limit) => n.min(limit.saturating_sub(self.passed)),
        };
        self.passed += room;
        room
    }

    /// The person said yes: the rest goes through.
    pub fn open(&mut self) {
        self.limit = None;
    }

    /// The question, as the prompt shows it.
    pub fn question(&self) -> String {
        format!(
            "the peer's listing has more than {} entries; show them all? [y/N] ",
            self.limit.unwrap_or(self.passed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::filter::IndexFilter;
    use crate::share::{Entry, RelPath};
    use crate::shell::Outcome;
    use crate::time::Timestamp;

    fn entry(name: &str) -> Entry {
        Entry {
            name: RelPath::parse(name).expect("a valid name"),
            size: 1234,
            mtime: Timestamp::from_system(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_763_719_200),
            ),
            file_type: "text/plain".into(),
            mode: 0o644,
        }
    }

    fn entries(from: usize, count: usize) -> Vec<Entry> {
        (from..from + count)
            .map(|i| entry(&format!("f{i:06}.txt")))
            .collect()
    }

    fn view(format: Format, width: Option<usize>) -> ListingView {
        let layout = Layout {
            width,
            colour: false,
        };
        ListingView::new(&ListingKind::Entries(IndexFilter::Longlist), format, layout)
    }

    /// A listing written in batches reads exactly as the table of the whole listing when
    /// no later cell is wider than the first batch's, in a pipe and on a terminal.
    #[test]
    fn batches_make_the_whole_table() {
        let all = entries(0, 250);
        for width in [None, Some(40), Some(120)] {
            let mut streamed = view(Format::Human, width);
            let mut text = String::new();
            for chunk in all.chunks(100) {
                text.push_str(&streamed.batch(&Batch::Entries(chunk.to_vec())));
            }
            text.push_str(&streamed.finish(true));
            let layout = Layout {
                width,
                colour: false,
            };
            let whole = render::outcome_with(&Outcome::Entries(all.clone()), Format::Human, layout);
            assert_eq!(text, format!("{whole}\n"), "at {width:?}");
            assert_eq!(streamed.shown(), 250);
        }
    }

    /// Memory stays bounded: each batch's text holds that batch's rows only (the header
    /// once), and a wider name later widens its column from its batch on, the rows
    /// written before staying as they were.
    #[test]
    fn each_batch_writes_only_its_rows() {
        let mut streamed = view(Format::Human, None);
        let first = streamed.batch(&Batch::Entries(entries(0, 3)));
        assert_eq!(first.lines().count(), 4, "{first}");
        assert!(first.starts_with("NAME"), "{first}");
        let long = entry("a much longer name than any before.txt");
        let second = streamed.batch(&Batch::Entries(vec![long, entry("short.txt")]));
        assert_eq!(second.lines().count(), 2, "{second}");
        assert!(!second.contains("NAME"), "{second}");
        let size_at = |line: &str| line.find("1.2 KiB");
        let lines: Vec<&str> = second.lines().collect();
        assert_eq!(size_at(lines[0]), size_at(lines[1]), "{second}");
        assert!(size_at(lines[1]) > size_at(first.lines().nth(1).unwrap_or("")));
        assert_eq!(streamed.finish(true), "");
    }

    /// JSON written in batches is the one-line array of the whole listing; cut short, its
    /// array is still closed; empty, it is `[]`.
    #[test]
    fn json_streams_one_valid_array() {
        let all = entries(0, 5);
        let mut streamed = view(Format::Json, None);
        let mut text = streamed.batch(&Batch::Entries(all[..2].to_vec()));
        text.push_str(&streamed.batch(&Batch::Entries(Vec::new())));
        text.push_str(&streamed.batch(&Batch::Entries(all[2..].to_vec())));
        text.push_str(&streamed.finish(true));
        let whole = render::outcome(&Outcome::Entries(all.clone()), Format::Json);
        assert_eq!(text, format!("{whole}\n"));
        let mut cut = view(Format::Json, None);
        let text = cut.batch(&Batch::Entries(all[..1].to_vec())) + &cut.finish(false);
        assert!(
            serde_json::from_str::<serde_json::Value>(&text).is_ok(),
            "{text}"
        );
        assert_eq!(view(Format::Json, None).finish(true), "[]\n");
        assert_eq!(view(Format::Json, None).finish(false), "");
        assert_eq!(
            view(Format::Human, None).finish(true),
            "no matching entries\n"
        );
        assert_eq!(view(Format::Human, None).finish(false), "");
    }

    /// A peer's hostile names stay escaped when streamed, as in the whole table.
    #[test]
    fn streamed_names_are_escaped() {
        let mut streamed = view(Format::Human, Some(80));
        let text = streamed.batch(&Batch::Entries(vec![entry("a\x1b]0;pwned\x07\r.txt")]));
        assert!(!text.contains(['\x1b', '\x07', '\r']), "{text}");
        assert!(text.contains(r"a\x1b]0;pwned\x07\r.txt"), "{text}");
        let mut json = view(Format::Json, None);
        let text = json.batch(&Batch::Entries(vec![entry("b\x1b[2J.txt")]));
        assert!(!text.contains('\x1b') && text.contains(r"\u001b"), "{text}");
    }

    /// The gate lets the threshold through, then asks once before the rest, whether the
    /// threshold falls inside a batch or between two; exactly the threshold never asks.
    #[test]
    fn the_gate_asks_once_past_the_threshold() {
        let mut gate = Gate::new(Some(10));
        assert_eq!(gate.room(4), 4);
        assert_eq!(gate.room(4), 4);
        assert_eq!(gate.room(4), 2, "the question is due after 2 of these 4");
        assert!(gate.question().contains("more than 10 entries"));
        assert_eq!(gate.room(2), 0, "nothing more until answered");
        gate.open();
        assert_eq!(gate.room(1000), 1000);
        let mut exact = Gate::new(Some(8));
        assert_eq!(exact.room(4) + exact.room(4), 8);
        let mut never = Gate::new(None);
        assert_eq!(never.room(usize::MAX / 2), usize::MAX / 2);
        assert_eq!(Gate::new(Some(0)).room(5), 5, "0 never asks");
    }
}
