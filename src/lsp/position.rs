//! Byte offsets (the pipeline's spans) ↔ LSP positions (line and UTF-16 code unit).

use lsp_types::{Position, Range};

use crate::diag::Span;

/// Line starts of a text, for converting positions both ways.
pub struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> LineIndex<'a> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    /// The position of a byte offset (clamped to the text, snapped to a character boundary).
    pub fn position(&self, offset: usize) -> Position {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let col: usize = self.text[self.starts[line]..offset].chars().map(char::len_utf16).sum();
        Position { line: line as u32, character: col as u32 }
    }

    pub fn range(&self, span: Span) -> Range {
        Range { start: self.position(span.start), end: self.position(span.end.max(span.start)) }
    }

    /// The byte offset of a position; positions past a line's end or the text's end clamp.
    pub fn offset(&self, p: Position) -> usize {
        let Some(&start) = self.starts.get(p.line as usize) else { return self.text.len() };
        let end = self.starts.get(p.line as usize + 1).map_or(self.text.len(), |e| e - 1);
        let mut units = 0;
        for (i, c) in self.text[start..end].char_indices() {
            if units >= p.character as usize {
                return start + i;
            }
            units += c.len_utf16();
        }
        end
    }

    /// The range of the whole text.
    pub fn full(&self) -> Range {
        self.range(Span::new(0, self.text.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_utf16_positions_agree() {
        let text = "a = 1\n# β → 𝔼\nloss";
        let ix = LineIndex::new(text);
        let loss = text.find("loss").unwrap();
        assert_eq!(ix.position(loss), Position { line: 2, character: 0 });
        // `𝔼` is two UTF-16 units; `β` and `→` one each.
        let e = text.find('𝔼').unwrap();
        assert_eq!(ix.position(e), Position { line: 1, character: 6 });
        assert_eq!(ix.position(e + 4), Position { line: 1, character: 8 });
        assert_eq!(ix.offset(Position { line: 1, character: 6 }), e);
        // Inside a character snaps back; past the end clamps.
        assert_eq!(ix.position(e + 1), Position { line: 1, character: 6 });
        assert_eq!(ix.offset(Position { line: 0, character: 99 }), 5);
        assert_eq!(ix.offset(Position { line: 9, character: 0 }), text.len());
    }
}
