//! The input line of `dmls chat`: a text buffer edited by grapheme clusters (so that an emoji
//! made of several code points, or a letter with combining marks, is one step of the cursor),
//! measured in terminal columns, scrolled horizontally to keep the cursor visible.

use unicode_segmentation::UnicodeSegmentation as _;
use unicode_width::UnicodeWidthStr as _;

/// Most bytes the input line holds (a paste beyond it is cut).
pub const MAX_INPUT_BYTES: usize = 16 * 1024;

/// How a newline of the buffer (from a paste) is shown on the one-line input.
const NEWLINE_MARK: &str = "↵";

/// The text being typed and the cursor in it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InputLine {
    text: String,
    /// Byte offset of the cursor, always on a grapheme boundary.
    cursor: usize,
}

impl InputLine {
    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether nothing is typed.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Takes the text out, leaving the line empty.
    pub fn take(&mut self) -> String {
        self.cursor = 0;
        std::mem::take(&mut self.text)
    }

    /// Inserts `s` at the cursor: control characters are dropped, `\r\n` and `\r` become
    /// `\n`. Stops at [`MAX_INPUT_BYTES`].
    pub fn insert_str(&mut self, s: &str) {
        let s = s.replace("\r\n", "\n").replace('\r', "\n");
        for c in s.chars() {
            if c.is_control() && c != '\n' && c != '\t' {
                continue;
            }
            let c = if c == '\t' { ' ' } else { c };
            if self.text.len() + c.len_utf8() > MAX_INPUT_BYTES {
                break;
            }
            self.text.insert(self.cursor, c);
            self.cursor += c.len_utf8();
        }
        // A combining mark typed after a letter joins its grapheme: keep the cursor on a
        // boundary.
        self.cursor = self.snap(self.cursor);
    }

    /// Inserts one typed character.
    pub fn insert_char(&mut self, c: char) {
        let mut buf = [0u8; 4];
        self.insert_str(c.encode_utf8(&mut buf));
    }

    /// Deletes the grapheme before the cursor.
    pub fn backspace(&mut self) {
        if let Some(start) = self.prev_boundary() {
            self.text.replace_range(start..self.cursor, "");
            self.cursor = start;
        }
    }

    /// Deletes the grapheme under the cursor.
    pub fn delete(&mut self) {
        if let Some(end) = self.next_boundary() {
            self.text.replace_range(self.cursor..end, "");
        }
    }

    /// Deletes the word before the cursor (Ctrl-W).
    pub fn delete_word(&mut self) {
        let before = &self.text[..self.cursor];
        let trimmed = before.trim_end();
        let start = trimmed.rfind(char::is_whitespace).map_or(0, |i| {
            i + trimmed[i..].chars().next().map_or(1, char::len_utf8)
        });
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    /// Moves one grapheme left.
    pub fn left(&mut self) {
        if let Some(p) = self.prev_boundary() {
            self.cursor = p;
        }
    }

    /// Moves one grapheme right.
    pub fn right(&mut self) {
        if let Some(n) = self.next_boundary() {
            self.cursor = n;
        }
    }

    /// Moves to the start.
    pub fn home(&mut self) {
        self.cursor = 0;
    }

    /// Moves to the end.
    pub fn end(&mut self) {
        self.cursor = self.text.len();
    }

    /// Deletes everything (Ctrl-U).
    pub fn clear(&mut self) {
        self.text.clear();
        self.cursor = 0;
    }

    fn prev_boundary(&self) -> Option<usize> {
        self.text[..self.cursor]
            .grapheme_indices(true)
            .next_back()
            .map(|(i, _)| i)
    }

    fn next_boundary(&self) -> Option<usize> {
        self.text[self.cursor..]
            .graphemes(true)
            .next()
            .map(|g| self.cursor + g.len())
    }

    fn snap(&self, at: usize) -> usize {
        let mut last = 0;
        for (i, g) in self.text.grapheme_indices(true) {
            if i >= at {
                return i;
            }
            last = i + g.len();
        }
        last.max(at.min(self.text.len()))
    }

    /// What to show in `width` columns, and the cursor's column in it: the text with newlines
    /// shown as ↵, scrolled so that the cursor is visible (with the text just before it).
    pub fn view(&self, width: usize) -> (String, usize) {
        if width == 0 {
            return (String::new(), 0);
        }
        let graphemes: Vec<(usize, &str)> = self.text.grapheme_indices(true).collect();
        let at = graphemes
            .iter()
            .position(|(i, _)| *i >= self.cursor)
            .unwrap_or(graphemes.len());
        // Walk back from the cursor while the text fits, keeping the cursor's own cell.
        let mut start = at;
        let mut used = 0;
        while start > 0 {
            let w = shown(graphemes[start - 1].1).width();
            if used + w >= width {
                break;
            }
            used += w;
            start -= 1;
        }
        let mut out = String::new();
        let mut cols = 0;
        let mut cursor_col = 0;
        for (k, (_, g)) in graphemes.iter().enumerate().skip(start) {
            if k == at {
                cursor_col = cols;
            }
            let g = shown(g);
            let w = g.width();
            if cols + w > width {
                break;
            }
            out.push_str(g);
            cols += w;
        }
        if at == graphemes.len() {
            cursor_col = cols.min(width.saturating_sub(1));
        }
        (out, cursor_col)
    }
}

/// A grapheme as the input line shows it.
fn shown(g: &str) -> &str {
    if g == "\n" { NEWLINE_MARK } else { g }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_by_grapheme() {
        let mut l = InputLine::default();
        l.insert_str("héllo 👍🏽 wörld");
        l.backspace();
        assert_eq!(l.text(), "héllo 👍🏽 wörl");
        for _ in 0..5 {
            l.left();
        }
        // The cursor is right after the thumbs-up with its skin tone: one grapheme.
        l.backspace();
        assert_eq!(l.text(), "héllo  wörl");
        l.home();
        l.delete();
        assert_eq!(l.text(), "éllo  wörl");
        l.end();
        l.delete_word();
        assert_eq!(l.text(), "éllo  ");
        assert_eq!(l.take(), "éllo  ");
        assert!(l.is_empty());
    }

    #[test]
    fn pastes_keep_newlines_and_drop_control_characters() {
        let mut l = InputLine::default();
        l.insert_str("a\r\nb\x1b[31m\tc");
        assert_eq!(l.text(), "a\nb[31m c");
        let (shown, col) = l.view(40);
        assert_eq!(shown, "a↵b[31m c");
        assert_eq!(col, 9);
        let mut big = InputLine::default();
        big.insert_str(&"x".repeat(MAX_INPUT_BYTES + 10));
        assert_eq!(big.text().len(), MAX_INPUT_BYTES);
    }

    #[test]
    fn long_lines_scroll_to_the_cursor() {
        let mut l = InputLine::default();
        l.insert_str(&"abcdefghij".repeat(3));
        let (shown, col) = l.view(10);
        assert_eq!(shown, "bcdefghij");
        assert_eq!(col, 9);
        l.home();
        let (shown, col) = l.view(10);
        assert_eq!(shown, "abcdefghij");
        assert_eq!(col, 0);
        // Wide characters count two columns.
        let mut w = InputLine::default();
        w.insert_str("日本語のテキスト");
        let (shown, col) = w.view(10);
        assert_eq!(shown, "のテキスト".chars().skip(1).collect::<String>());
        assert_eq!(col, 8);
    }
}
