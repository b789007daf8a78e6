//! Comments, recovered from the text (the grammar skips them): for the formatter, which keeps
//! them, and for `# rlx: allow(...)` suppression comments.

use crate::diag::Span;

#[derive(Debug, Clone, PartialEq)]
pub struct Comment {
    /// From `#` to the end of the line, excluding the newline.
    pub span: Span,
    pub text: String,
    /// Nothing but whitespace precedes it on its line.
    pub own_line: bool,
}

/// Every comment in `text`, in order. Strings are skipped, so `"#"` is not a comment.
pub fn comments(text: &str) -> Vec<Comment> {
    let mut out = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut line_has_code = false;
    let mut iter = text.char_indices();
    while let Some((i, c)) = iter.next() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"' | '\n') => in_string = false,
                _ => {}
            }
            if c == '\n' {
                line_has_code = false;
            }
            continue;
        }
        match c {
            '\n' => line_has_code = false,
            '"' => {
                in_string = true;
                line_has_code = true;
            }
            '#' => {
                let end = text[i..].find('\n').map_or(text.len(), |e| i + e);
                out.push(Comment {
                    span: Span::new(i, end),
                    text: text[i..end].trim_end().to_string(),
                    own_line: !line_has_code,
                });
                // Skip to the end of the line.
                while let Some((j, _)) = iter.clone().next() {
                    if j >= end {
                        break;
                    }
                    iter.next();
                }
            }
            c if c.is_whitespace() => {}
            _ => line_has_code = true,
        }
    }
    out
}

/// The lint names of a suppression comment `# rlx: allow(a, b)`, with their spans.
pub fn allowed_lints(comment: &Comment) -> Option<Vec<(String, Span)>> {
    let body = comment.text.strip_prefix('#')?.trim_start();
    let rest = body.strip_prefix("rlx:")?.trim_start();
    let inner = rest.strip_prefix("allow(")?;
    let close = inner.find(')')?;
    let offset = comment.span.start + (comment.text.len() - inner.len());
    let mut names = Vec::new();
    let mut pos = 0;
    for part in inner[..close].split(',') {
        let lead = part.len() - part.trim_start().len();
        let name = part.trim();
        if !name.is_empty() {
            let start = offset + pos + lead;
            names.push((name.to_string(), Span::new(start, start + name.len())));
        }
        pos += part.len() + 1;
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_comments_outside_strings() {
        let text = "a = \"#no\" # yes\n# own\nb";
        let cs = comments(text);
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0].text, "# yes");
        assert!(!cs[0].own_line);
        assert!(cs[1].own_line);
    }

    #[test]
    fn parses_allow_lists() {
        let text = "# rlx: allow(unused-binding, singleton-group)";
        let c = &comments(text)[0];
        let names = allowed_lints(c).unwrap();
        assert_eq!(names[0].0, "unused-binding");
        assert_eq!(&text[names[1].1.start..names[1].1.end], "singleton-group");
    }
}
