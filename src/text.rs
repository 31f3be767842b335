//! Text from elsewhere (a peer's file names, types and error messages, names read from the
//! disk) made safe to show on a terminal and to copy into a log: a hostile peer must not be
//! able to move the cursor, set the window title, write the clipboard (OSC 52), clear the
//! screen, or forge rows and log lines.
//!
//! The library never prints; these pure functions exist so that the shell, the CLI and the
//! logs escape text one way.
//!
//! # The escaping
//! [`escape`] turns every character that a terminal may act on, or that may reorder what is
//! shown, into a backslash escape that reads as the body of a Rust string literal, so that
//! the original can always be told from what is shown:
//!
//! | character | shown as |
//! |---|---|
//! | `\` itself | `\\` |
//! | tab, line feed, carriage return | `\t`, `\n`, `\r` |
//! | other C0 controls (U+0000–U+001F: ESC, BEL, BS...) and DEL (U+007F) | `\x1b`, `\x07`, `\x08`, `\x7f` |
//! | C1 controls (U+0080–U+009F) | `\u{9b}` |
//! | bidi controls (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069) | `\u{202e}` |
//! | line and paragraph separators (U+2028, U+2029) | `\u{2028}` |
//!
//! Since the backslash is escaped too, every backslash on screen starts an escape: a name
//! that literally holds the four characters `\x1b` is shown as `\\x1b`, never as `\x1b`.
//! Everything else (letters of any script, emoji, wide characters) is shown as it is, and
//! text with nothing to escape is returned borrowed, without a copy.
//!
//! JSON output is made safe without changing its value: [`json`] writes the same
//! characters as `\u` escapes, which any JSON reader turns back into the original.

use std::borrow::Cow;
use std::fmt::{self, Display, Write as _};
use std::io;

use serde::Serialize;

/// Most characters a log line or a request-log record copies from one piece of peer text:
/// enough for any real name or message, too few to flood a log.
pub const LOG_LIMIT: usize = 256;

/// What marks text cut at [`LOG_LIMIT`].
pub const CUT_MARK: &str = "…";

/// How `c` is shown, when not as itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// `\` followed by this character (`\\`, `\t`, `\n`, `\r`).
    Short(char),
    /// `\xHH`: the other C0 controls and DEL.
    Byte(u8),
    /// `\u{H...}`: C1 controls, bidi controls, line and paragraph separators.
    Unicode(u32),
}

/// The escape that stands for `c`, or `None` when `c` is shown as itself.
fn escape_of(c: char) -> Option<Escape> {
    Some(match c {
        '\\' => Escape::Short('\\'),
        '\t' => Escape::Short('t'),
        '\n' => Escape::Short('n'),
        '\r' => Escape::Short('r'),
        '\0'..='\x1f' | '\x7f' => Escape::Byte(c as u8),
        '\u{80}'..='\u{9f}' | '\u{2028}' | '\u{2029}' => Escape::Unicode(c as u32),
        _ if is_bidi_control(c) => Escape::Unicode(c as u32),
        _ => return None,
    })
}

/// Whether `c` is one of Unicode's explicit bidirectional formatting characters, which
/// reorder the text around them on screen (`evil\u{202e}txt.exe` shows as `evilexe.txt`).
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// Whether JSON output writes `c` as a `\u` escape beyond what JSON itself requires (it
/// escapes U+0000–U+001F already): DEL, C1, bidi controls and the line separators.
fn json_escapes(c: char) -> bool {
    c == '\x7f' || matches!(escape_of(c), Some(Escape::Unicode(_)))
}

impl Escape {
    /// Writes the escape to `out`.
    fn write_to(self, out: &mut impl fmt::Write) -> fmt::Result {
        match self {
            Escape::Short(c) => write!(out, "\\{c}"),
            Escape::Byte(b) => write!(out, "\\x{b:02x}"),
            Escape::Unicode(u) => write!(out, "\\u{{{u:x}}}"),
        }
    }

    /// How many characters the escape takes.
    fn len(self) -> usize {
        match self {
            Escape::Short(_) => 2,
            Escape::Byte(_) => 4,
            // `\u{` + hex digits + `}`.
            Escape::Unicode(u) => 4 + (u32::BITS - u.leading_zeros()).div_ceil(4).max(1) as usize,
        }
    }
}

/// `text` as it may be shown on a terminal: every character a terminal could act on (see
/// the module's table) replaced by its escape, the backslash doubled. Text with nothing to
/// escape (nearly every name) comes back borrowed.
pub fn escape(text: &str) -> Cow<'_, str> {
    let Some(first) = text.find(|c| escape_of(c).is_some()) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        match escape_of(c) {
            // Writing to a String cannot fail.
            Some(escape) => {
                let _ = escape.write_to(&mut out);
            }
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether `text` is shown as itself (nothing to escape).
pub fn is_plain(text: &str) -> bool {
    !text.contains(|c| escape_of(c).is_some())
}

/// `text` cut after `limit` characters, [`CUT_MARK`] marking the cut; shorter text comes
/// back borrowed. For records that keep the original characters (the request log, which is
/// escaped when shown) but must not grow without bound.
pub fn truncate(text: &str, limit: usize) -> Cow<'_, str> {
    match text.char_indices().nth(limit) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}{CUT_MARK}", &text[..cut])),
    }
}

/// `value`, displayed for a log line: escaped as [`escape`] does and cut after
/// [`LOG_LIMIT`] characters (an escape is never cut in two). Formats only when the log line
/// is written, and without an intermediate copy: `tracing::warn!(reason = %text::for_log(&e))`.
pub fn for_log<T: Display>(value: T) -> ForLog<T> {
    ForLog(value)
}

/// A value displayed escaped and bounded; see [`for_log`].
#[derive(Debug, Clone, Copy)]
pub struct ForLog<T>(T);

impl<T: Display> Display for ForLog<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bounded = Bounded {
            out: f,
            left: LOG_LIMIT,
            cut: false,
        };
        write!(bounded, "{}", self.0)?;
        if bounded.cut {
            bounded.out.write_str(CUT_MARK)?;
        }
        Ok(())
    }
}

/// A writer that escapes what goes through it and stops after a number of characters.
struct Bounded<'a, W: fmt::Write> {
    /// Where the escaped text goes.
    out: &'a mut W,
    /// Characters that may still be written.
    left: usize,
    /// Whether something was left out.
    cut: bool,
}

impl<W: fmt::Write> fmt::Write for Bounded<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.cut {
                return Ok(());
            }
            let escape = escape_of(c);
            let len = escape.map_or(1, Escape::len);
            if len > self.left {
                self.cut = true;
                return Ok(());
            }
            self.left -= len;
            match escape {
                Some(escape) => escape.write_to(self.out)?,
                None => self.out.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Escaped text (the output of [`escape`]) split into the pieces that must stay whole when
/// it is shortened: each escape (`\x1b`, `\u{202e}`, `\\`) and each other character. Cutting
/// inside an escape could leave something that reads as another (`…\x1b` from `\\x1b`).
pub fn pieces(escaped: &str) -> Vec<&str> {
    let mut pieces = Vec::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(c) = rest.chars().next() {
        let len = if c == '\\' {
            escape_len(rest)
        } else {
            c.len_utf8()
        };
        let (piece, tail) = rest.split_at(len);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

/// The length in bytes of the escape at the start of `text` (which starts with `\`): the
/// whole `\xHH` or `\u{...}` when well formed, else the backslash and the next character.
fn escape_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    match bytes.get(1) {
        Some(b'x') if bytes.len() >= 4 && bytes[2..4].iter().all(u8::is_ascii_hexdigit) => 4,
        Some(b'u') if bytes.get(2) == Some(&b'{') => match text.find('}') {
            Some(end) if text[3..end].chars().all(|c| c.is_ascii_hexdigit()) => end + 1,
            _ => 2,
        },
        Some(_) => 1 + text[1..].chars().next().map_or(0, char::len_utf8),
        None => 1,
    }
}

/// `value` as JSON on one line, safe to print on a terminal and unchanged for a JSON
/// reader: DEL, C1 controls, bidi controls and the line separators are written as `\u`
/// escapes (JSON escapes the C0 controls already).
pub fn json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let mut out = Vec::with_capacity(128);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, SafeJson);
    value.serialize(&mut serializer)?;
    // The serializer writes UTF-8 only; `from_utf8_lossy` never has to replace anything.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// serde_json's compact formatter, with the extra `\u` escapes of [`json`].
struct SafeJson;

impl serde_json::ser::Formatter for SafeJson {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if json_escapes(c) {
                writer.write_all(&fragment.as_bytes()[start..i])?;
                write!(writer, "\\u{:04x}", c as u32)?;
                start = i + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `text` holds nothing a terminal acts on or reorders: no C0 but `\n`, no
    /// DEL, no C1, no bidi control.
    fn printable(text: &str) -> bool {
        text.chars()
            .all(|c| c == '\n' || escape_of(c).is_none() || c == '\\')
    }

    /// Plain names, of any script, come back as they are, borrowed.
    #[test]
    fn plain_text_is_borrowed() {
        for name in [
            "hello.txt",
            "música/canción ñ.mp3",
            "日本語のファイル名.txt",
            "emoji 🎵 and spaces",
            "",
        ] {
            assert!(
                matches!(escape(name), Cow::Borrowed(n) if n == name),
                "{name}"
            );
            assert!(is_plain(name));
        }
    }

    /// Every C0 control, DEL and the common ones by name.
    #[test]
    fn c0_controls_and_del() {
        assert_eq!(escape("a\tb\nc\rd"), r"a\tb\nc\rd");
        assert_eq!(escape("\x1b]0;title\x07"), r"\x1b]0;title\x07");
        assert_eq!(escape("\x1b[2J"), r"\x1b[2J");
        assert_eq!(escape("back\x08space"), r"back\x08space");
        assert_eq!(escape("nul\0"), r"nul\x00");
        assert_eq!(escape("del\x7f"), r"del\x7f");
        for b in (0u8..0x20).chain([0x7f]) {
            let text = char::from(b).to_string();
            let escaped = escape(&text);
            assert!(escaped.starts_with('\\') && printable(&escaped), "{b:#x}");
        }
    }

    /// C1 controls (8-bit CSI, OSC...) and bidi controls are shown as `\u{...}`.
    #[test]
    fn c1_and_bidi_controls() {
        assert_eq!(escape("\u{9b}31m"), r"\u{9b}31m");
        assert_eq!(escape("\u{9d}52;c;x\u{9c}"), r"\u{9d}52;c;x\u{9c}");
        assert_eq!(escape("evil\u{202e}txt.exe"), r"evil\u{202e}txt.exe");
        for c in ('\u{80}'..='\u{9f}')
            .chain('\u{202a}'..='\u{202e}')
            .chain('\u{2066}'..='\u{2069}')
            .chain(['\u{200e}', '\u{200f}', '\u{061c}', '\u{2028}', '\u{2029}'])
        {
            let escaped = escape(&c.to_string()).into_owned();
            assert_eq!(escaped, format!("\\u{{{:x}}}", c as u32));
            assert!(!is_plain(&c.to_string()));
        }
        // Neighbours that are ordinary text stay.
        assert!(is_plain("\u{a0}\u{200d}\u{2030}\u{2065}"));
    }

    /// A literal backslash is doubled, so that text spelling an escape cannot pass for the
    /// character: `\x1b` typed out and a real ESC differ on screen.
    #[test]
    fn backslash_keeps_escapes_unambiguous() {
        assert_eq!(escape(r"a\b"), r"a\\b");
        assert_eq!(escape(r"\x1b"), r"\\x1b");
        assert_ne!(escape(r"\x1b"), escape("\x1b"));
        assert_ne!(escape(r"\u{202e}"), escape("\u{202e}"));
    }

    /// Multi-byte text around escapes keeps its characters whole.
    #[test]
    fn multibyte_text_around_escapes() {
        assert_eq!(escape("ñ\x1bñ日\u{202e}本"), r"ñ\x1bñ日\u{202e}本");
    }

    /// Short text is untouched; long text is cut at a character and marked.
    #[test]
    fn truncation() {
        assert_eq!(truncate("short", 10), "short");
        assert!(matches!(truncate("short", 5), Cow::Borrowed(_)));
        assert_eq!(truncate("ñañañaña", 3), "ñañ…");
        let long = "x".repeat(10_000);
        assert_eq!(truncate(&long, LOG_LIMIT).chars().count(), LOG_LIMIT + 1);
    }

    /// Log text is escaped, bounded, and an escape is never cut in two.
    #[test]
    fn log_text_is_escaped_and_bounded() {
        assert_eq!(for_log("a\x1b[2Jb").to_string(), r"a\x1b[2Jb");
        assert_eq!(for_log(format!("{}", 42)).to_string(), "42");
        let flood = "\x1b".repeat(10_000);
        let logged = for_log(&flood).to_string();
        assert_eq!(
            logged,
            format!("{}{CUT_MARK}", r"\x1b".repeat(LOG_LIMIT / 4))
        );
        let almost = format!("{}\u{202e}", "a".repeat(LOG_LIMIT - 3));
        assert_eq!(
            for_log(&almost).to_string(),
            format!("{}{CUT_MARK}", "a".repeat(LOG_LIMIT - 3))
        );
        let exact = "b".repeat(LOG_LIMIT);
        assert_eq!(for_log(&exact).to_string(), exact);
    }

    /// Escaped text splits into whole escapes and characters.
    #[test]
    fn pieces_keep_escapes_whole() {
        let escaped = escape("a\x1bñ\u{202e}\\x");
        assert_eq!(
            pieces(&escaped),
            ["a", r"\x1b", "ñ", r"\u{202e}", r"\\", "x"]
        );
        assert_eq!(pieces(r"\"), [r"\"]);
        assert_eq!(pieces(r"\u{zz}"), [r"\u", "{", "z", "z", "}"]);
    }

    /// JSON output escapes what a terminal would act on and reads back unchanged.
    #[test]
    fn json_is_safe_and_lossless() {
        let name = "a\x1b]52;c;eA==\x07\u{9b}2J\u{202e}\x7f\\\"ñ";
        let text = json(&serde_json::json!({ "name": name })).expect("serializes");
        assert!(printable(&text), "{text}");
        assert!(text.contains(r"\u009b") && text.contains(r"\u202e") && text.contains(r"\u007f"));
        let back: serde_json::Value = serde_json::from_str(&text).expect("parses");
        assert_eq!(back["name"], name);
        assert_eq!(
            json(&serde_json::json!(["plain"])).expect("ok"),
            r#"["plain"]"#
        );
    }
}
