//! Aligned text tables that fit a terminal: widths count terminal columns (not bytes), and
//! when a table is too wide its long columns give up width, names losing their middle
//! (`music/…/song.mp3`) so that what tells them apart (the file name) stays visible. A
//! table that still does not fit (long hashes at 80 columns) has its lines cut at the
//! terminal's width with `…`: nothing both wraps and is shortened.
//!
//! A cell is text to show, never terminal control: every cell is escaped
//! ([`crate::text::escape`]) before widths are measured, so that a peer's name cannot move
//! the cursor or forge a row, and rows stay aligned. Shortening never cuts an escape in two.

use std::borrow::Cow;

use unicode_width::UnicodeWidthStr;

use crate::text;

/// The ellipsis that marks removed text.
const ELLIPSIS: &str = "…";

/// Narrowest a shrinking column becomes (or its header, if wider).
const MIN_SHRUNK: usize = 12;

/// Space between columns.
const GAP: &str = "  ";

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text, flush left.
    Left,
    /// Numbers, flush right.
    Right,
}

/// How a column gives up width when the table is too wide for the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Never shortened (hashes, times: shortening would make them useless).
    Keep,
    /// A path: whole components are replaced by `…` in the middle (`music/…/song.mp3`).
    Path,
    /// Any text, shortened in the middle (`download tcp mu…ng.mp3`).
    Middle,
    /// Any text, cut at the end (`connection refu…`).
    End,
}

/// One column: its header, alignment and how it shrinks.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// The header text.
    pub header: &'static str,
    /// How cells line up.
    pub align: Align,
    /// How cells shrink.
    pub fit: Fit,
}

impl Column {
    /// A column of text that never shrinks.
    pub const fn keep(header: &'static str) -> Column {
        Column {
            header,
            align: Align::Left,
            fit: Fit::Keep,
        }
    }

    /// A right-aligned column (sizes, counts).
    pub const fn right(header: &'static str) -> Column {
        Column {
            header,
            align: Align::Right,
            fit: Fit::Keep,
        }
    }

    /// A column that shrinks as `fit` says.
    pub const fn shrink(header: &'static str, fit: Fit) -> Column {
        Column {
            header,
            align: Align::Left,
            fit,
        }
    }
}

/// The table as text: a header row then one row per entry, each line without trailing
/// spaces and no trailing newline. `width` is the terminal's width (`None`: no limit);
/// with `bold_header` the header is written in bold. Cells are escaped.
pub fn render(
    columns: &[Column],
    rows: &[Vec<String>],
    width: Option<usize>,
    bold_header: bool,
) -> String {
    TableStream::new(columns, width, bold_header).rows(rows)
}

/// A table written while its rows arrive, batch by batch, holding no row once written: a
/// listing of a million entries is shown in the memory of one batch.
///
/// Columns are as wide as the widest cell seen so far (then fitted to `width` as
/// [`render`] fits them): the first batch sizes them and the header, and a wider cell in a
/// later batch widens its column from that batch on, rows already written staying as they
/// were. On a terminal the table still fits its width (names lose their middle); in a pipe
/// nothing is shortened, so a later long name only pushes its row's other cells right. A
/// table given all its rows at once is exactly [`render`]'s.
pub struct TableStream {
    /// The columns.
    columns: Vec<Column>,
    /// Each column's widest cell (or header) so far, in terminal columns.
    widest: Vec<usize>,
    /// The terminal's width (`None`: no limit).
    width: Option<usize>,
    /// Whether the header is written in bold.
    bold_header: bool,
    /// Whether the header was written (with the first batch).
    started: bool,
}

impl TableStream {
    /// A table with these columns, nothing written yet.
    pub fn new(columns: &[Column], width: Option<usize>, bold_header: bool) -> TableStream {
        TableStream {
            columns: columns.to_vec(),
            widest: columns.iter().map(|c| c.header.width()).collect(),
            width,
            bold_header,
            started: false,
        }
    }

    /// The lines that show `rows` (the header first, on the first call), without a
    /// trailing newline; cells are escaped. Empty when there is nothing to write.
    pub fn rows(&mut self, rows: &[Vec<String>]) -> String {
        let rows: Vec<Vec<Cow<'_, str>>> = rows
            .iter()
            .map(|row| row.iter().map(|cell| text::escape(cell)).collect())
            .collect();
        for row in &rows {
            for (w, cell) in self.widest.iter_mut().zip(row) {
                *w = (*w).max(cell.width());
            }
        }
        let widths = fit_widths(&self.columns, self.widest.clone(), self.width);
        let mut lines = Vec::with_capacity(rows.len() + 1);
        if !self.started {
            self.started = true;
            let header: Vec<Cow<'_, str>> = self
                .columns
                .iter()
                .map(|c| Cow::Borrowed(c.header))
                .collect();
            let header_line = line(&self.columns, &widths, &header, self.width);
            lines.push(if self.bold_header && !header_line.is_empty() {
                format!("\x1b[1m{header_line}\x1b[0m")
            } else {
                header_line
            });
        }
        for row in &rows {
            lines.push(line(&self.columns, &widths, row, self.width));
        }
        lines.join("\n")
    }
}

/// One line: each cell shortened to its column's width if needed, then padded; the whole
/// cut at `limit` (the terminal's width) with `…` if the columns could not shrink enough,
/// so that it never wraps.
fn line(
    columns: &[Column],
    widths: &[usize],
    cells: &[Cow<'_, str>],
    limit: Option<usize>,
) -> String {
    let cells: Vec<String> = columns
        .iter()
        .zip(widths)
        .zip(cells)
        .map(|((column, &width), cell)| {
            let cell = shorten(cell, width, column.fit);
            let pad = " ".repeat(width.saturating_sub(cell.width()));
            match column.align {
                Align::Left => format!("{cell}{pad}"),
                Align::Right => format!("{pad}{cell}"),
            }
        })
        .collect();
    let line = cells.join(GAP).trim_end().to_string();
    match limit {
        Some(limit) if line.width() > limit => shorten_end(&line, limit),
        _ => line,
    }
}

/// Column widths: each column's widest cell (`widths`), then, while the table is wider than `width`,
/// columns lose width one at a time: first those cut at the end (least telling), then
/// those shortened in the middle, then paths (names are what people look for); within a
/// kind, the widest first. None goes below [`MIN_SHRUNK`] or its header. A table that
/// cannot fit even so has its lines cut at the width ([`line`]).
fn fit_widths(columns: &[Column], mut widths: Vec<usize>, width: Option<usize>) -> Vec<usize> {
    let Some(limit) = width else {
        return widths;
    };
    let total: usize = widths.iter().sum::<usize>() + GAP.len() * widths.len().saturating_sub(1);
    let mut excess = total.saturating_sub(limit);
    for kind in [Fit::End, Fit::Middle, Fit::Path] {
        let floor = |i: usize| columns[i].header.width().max(MIN_SHRUNK);
        while excess > 0 {
            // The widest column of this kind that can still shrink; on a tie the later
            // one, so that tied columns take turns.
            let widest = (0..columns.len())
                .filter(|&i| columns[i].fit == kind && widths[i] > floor(i))
                .max_by_key(|&i| widths[i]);
            let Some(i) = widest else {
                break;
            };
            widths[i] -= 1;
            excess -= 1;
        }
    }
    widths
}

/// `text` (escaped) shortened to at most `width` columns as `fit` says.
pub fn shorten(text: &str, width: usize, fit: Fit) -> String {
    if text.width() <= width {
        return text.to_string();
    }
    match fit {
        Fit::Keep => text.to_string(),
        Fit::Path => shorten_path(text, width),
        Fit::Middle => shorten_middle(text, width),
        Fit::End => shorten_end(text, width),
    }
}

/// A path shortened by replacing middle components with `…`: the first component and as
/// many trailing ones as fit (`music/…/live/song.mp3`). When not even the first and the
/// last fit, `…/last`; failing that, the last component shortened in its middle.
pub fn shorten_path(path: &str, width: usize) -> String {
    if path.width() <= width {
        return path.to_string();
    }
    // A directory's trailing slash stays with its last component.
    let (body, slash) = match path.strip_suffix('/') {
        Some(body) => (body, "/"),
        None => (path, ""),
    };
    let parts: Vec<&str> = body.split('/').collect();
    if parts.len() > 1 {
        let fits = |text: &String| text.width() <= width;
        // Keep the first component and the longest tail that fits.
        for keep in (1..parts.len() - 1).rev() {
            let tail = parts[parts.len() - keep..].join("/");
            let candidate = format!("{}/{ELLIPSIS}/{tail}{slash}", parts[0]);
            if fits(&candidate) {
                return candidate;
            }
        }
        let last = parts[parts.len() - 1];
        let candidate = format!("{ELLIPSIS}/{last}{slash}");
        if fits(&candidate) {
            return candidate;
        }
    }
    shorten_middle(path, width)
}

/// Text (escaped) shortened in its middle, keeping a little more of the end (where file
/// names keep their extension): `a very lo…name.mp3`.
pub fn shorten_middle(text: &str, width: usize) -> String {
    if text.width() <= width {
        return text.to_string();
    }
    if width <= ELLIPSIS.width() {
        return ELLIPSIS.chars().take(width).collect();
    }
    let room = width - ELLIPSIS.width();
    let head_room = room / 2;
    let tail_room = room - head_room;
    let pieces = text::pieces(text);
    let head = take_columns(pieces.iter().copied(), head_room);
    let mut tail: Vec<&str> = take_columns(pieces.iter().rev().copied(), tail_room);
    tail.reverse();
    format!("{}{ELLIPSIS}{}", head.concat(), tail.concat())
}

/// Text (escaped) cut at the end with `…`: `connection refu…`.
pub fn shorten_end(text: &str, width: usize) -> String {
    if text.width() <= width {
        return text.to_string();
    }
    if width <= ELLIPSIS.width() {
        return ELLIPSIS.chars().take(width).collect();
    }
    let pieces = text::pieces(text);
    format!(
        "{}{ELLIPSIS}",
        take_columns(pieces.into_iter(), width - ELLIPSIS.width()).concat()
    )
}

/// As many pieces (characters, or whole escapes) as fit in `columns` terminal columns.
fn take_columns<'a>(pieces: impl Iterator<Item = &'a str>, columns: usize) -> Vec<&'a str> {
    let mut used = 0;
    let mut out = Vec::new();
    for piece in pieces {
        let w = piece.width();
        if used + w > columns {
            break;
        }
        used += w;
        out.push(piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths lose their middle components first, then the first, then characters.
    #[test]
    fn paths_lose_their_middle() {
        let path = "music/live/2024/berlin/song.mp3";
        assert_eq!(shorten_path(path, 100), path);
        assert_eq!(shorten_path(path, 26), "music/…/berlin/song.mp3");
        assert_eq!(shorten_path(path, 16), "music/…/song.mp3");
        assert_eq!(shorten_path(path, 11), "…/song.mp3");
        assert_eq!(shorten_path(path, 8), "mus….mp3");
        assert_eq!(shorten_path("music/albums/", 9), "…/albums/");
        for width in 1..path.len() {
            assert!(shorten_path(path, width).width() <= width, "{width}");
        }
    }

    /// Middle and end shortening count columns, so wide characters never overflow.
    #[test]
    fn shortening_counts_columns() {
        assert_eq!(shorten_middle("abcdefghij", 7), "abc…hij");
        assert_eq!(shorten_end("connection refused", 10), "connectio…");
        let wide = "日本語のファイル名.txt";
        for width in 1..wide.width() {
            assert!(shorten_middle(wide, width).width() <= width, "{width}");
            assert!(shorten_end(wide, width).width() <= width, "{width}");
        }
    }

    /// Columns line up by display width, even with wide characters.
    #[test]
    fn aligns_wide_characters() {
        let text = render(
            &[Column::keep("NAME"), Column::right("SIZE")],
            &[
                vec!["日本.txt".into(), "1 B".into()],
                vec!["a".into(), "10 B".into()],
            ],
            None,
            false,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1].width(), lines[2].width());
    }

    /// A too-wide table shrinks its shrinkable columns to the width and keeps the others.
    #[test]
    fn fits_the_width() {
        let columns = [
            Column::shrink("NAME", Fit::Path),
            Column::keep("MD5"),
            Column::shrink("TYPE", Fit::End),
        ];
        let rows = vec![vec![
            "music/live/2024/berlin/a very long song name.mp3".to_string(),
            "0123456789abcdef0123456789abcdef".to_string(),
            "application/octet-stream".to_string(),
        ]];
        for width in [60, 70, 80] {
            let text = render(&columns, &rows, Some(width), false);
            assert!(text.lines().all(|l| l.width() <= width), "{width}:\n{text}");
            assert!(text.contains("0123456789abcdef0123456789abcdef"));
        }
        // Too narrow for the kept column: shrinkable ones stop at their floor, and each
        // line is cut at the width with an ellipsis rather than wrapped.
        let text = render(&columns, &rows, Some(40), false);
        for line in text.lines() {
            assert!(line.width() <= 40, "{text}");
        }
        assert!(
            text.lines().nth(1).is_some_and(|l| l.ends_with('…')),
            "{text}"
        );
        assert!(text.contains("0123456789abcdef012345"), "{text}");
    }

    /// Cells are escaped before they are measured: a name holding escape sequences shows
    /// them as text, and the rows stay aligned.
    #[test]
    fn cells_are_escaped_and_aligned() {
        let text = render(
            &[Column::keep("NAME"), Column::right("SIZE")],
            &[
                vec!["a\x1b]0;pwned\x07\r\u{202e}.txt".into(), "1 B".into()],
                vec!["b".into(), "10 B".into()],
            ],
            None,
            false,
        );
        assert!(!text.contains(['\x1b', '\x07', '\r', '\u{202e}']), "{text}");
        assert!(text.contains(r"a\x1b]0;pwned\x07\r\u{202e}.txt"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].width(), lines[2].width());
    }

    /// Shortening keeps escapes whole: a doubled backslash never loses half and passes
    /// for the start of an escape.
    #[test]
    fn shortening_keeps_escapes_whole() {
        let escaped = crate::text::escape(r"aaaa\x1b\x1b\x1bzzzz").into_owned();
        for width in 2..escaped.len() {
            for short in [
                shorten_middle(&escaped, width),
                shorten_end(&escaped, width),
                shorten_path(&escaped, width),
            ] {
                assert!(short.width() <= width, "{width}: {short}");
                let kept: String = short.split(ELLIPSIS).collect();
                // Only doubled backslashes remain: every run of them has even length.
                for run in kept.split(|c| c != '\\') {
                    assert!(run.len() % 2 == 0, "{width}: {short}");
                }
            }
        }
    }
}
