//! Final-answer extraction and comparison for math data: GSM8K's `#### 72` lines and LaTeX
//! `\boxed{…}` answers (MATH), the verifiers most RLVR work on these sets uses.

/// How a file's answers (and a response's) state the final answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerFormat {
    /// After the last `####`; a response without one is read by its last number.
    Gsm8k,
    /// Inside the last `\boxed{…}` (braces balanced).
    Boxed,
    /// The whole text, trimmed.
    Exact,
}

impl AnswerFormat {
    /// The name `parse` reads.
    pub fn name(self) -> &'static str {
        match self {
            AnswerFormat::Gsm8k => "gsm8k",
            AnswerFormat::Boxed => "boxed",
            AnswerFormat::Exact => "exact",
        }
    }

    pub fn parse(name: &str) -> Option<AnswerFormat> {
        match name {
            "gsm8k" => Some(AnswerFormat::Gsm8k),
            "boxed" => Some(AnswerFormat::Boxed),
            "exact" => Some(AnswerFormat::Exact),
            _ => None,
        }
    }

    /// The reference answer stated in an answer field (the whole field when it has no marker).
    pub fn reference(self, field: &str) -> String {
        self.extract(field).unwrap_or_else(|| field.trim().to_string())
    }

    /// The final answer a response states, if it states one.
    pub fn extract(self, text: &str) -> Option<String> {
        match self {
            AnswerFormat::Gsm8k => match text.rfind("####") {
                Some(i) => Some(text[i + 4..].lines().next().unwrap_or("").trim().to_string())
                    .filter(|s| !s.is_empty()),
                None => last_number(text),
            },
            AnswerFormat::Boxed => last_boxed(text),
            AnswerFormat::Exact => Some(text.trim().to_string()).filter(|s| !s.is_empty()),
        }
    }

    /// 1 if the response's final answer equals the reference, else 0.
    pub fn score(self, reference: &str, response: &str) -> f32 {
        match self.extract(response) {
            Some(a) if equivalent(&a, reference) => 1.0,
            _ => 0.0,
        }
    }
}

/// The last number in a text (`-1,234.5` → `-1234.5`), GSM8K's flexible match.
fn last_number(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut end = chars.len();
    while end > 0 {
        if chars[end - 1].is_ascii_digit() {
            let mut start = end;
            while start > 0
                && (chars[start - 1].is_ascii_digit() || ",.".contains(chars[start - 1]))
            {
                start -= 1;
            }
            if start > 0 && chars[start - 1] == '-' {
                start -= 1;
            }
            let s: String = chars[start..end].iter().collect();
            return Some(s.trim_start_matches([',', '.']).to_string());
        }
        end -= 1;
    }
    None
}

/// The contents of the last `\boxed{…}` (or `\fbox{…}`), with nested braces.
fn last_boxed(text: &str) -> Option<String> {
    let start = text.rfind("\\boxed").or_else(|| text.rfind("\\fbox"))?;
    let rest = &text[start..];
    let open = rest.find('{')?;
    let mut depth = 0usize;
    for (i, c) in rest[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(rest[open + 1..open + i].trim().to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// A canonical form: no spaces, `$`, thousands commas, `\left`/`\right`, `\!`, trailing `.`;
/// `\dfrac`/`\tfrac` → `\frac`.
fn normalize(s: &str) -> String {
    let mut t = s
        .replace("\\left", "")
        .replace("\\right", "")
        .replace("\\!", "")
        .replace("\\dfrac", "\\frac")
        .replace("\\tfrac", "\\frac")
        .replace('$', "");
    t.retain(|c| !c.is_whitespace());
    let t = t.trim_end_matches('.');
    // `1,234` is a number; `1,2` (a pair) is left alone.
    let unthousanded = t.replace(',', "");
    if t.contains(',')
        && unthousanded.parse::<f64>().is_ok()
        && t.split(',').skip(1).all(|g| g.len() == 3)
    {
        return unthousanded;
    }
    t.to_string()
}

/// Whether two answers are the same: equal numbers, or equal normalised text.
pub fn equivalent(a: &str, b: &str) -> bool {
    let (a, b) = (normalize(a), normalize(b));
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm8k_answers_after_the_marker_or_the_last_number() {
        let f = AnswerFormat::Gsm8k;
        let reference = f.reference("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 1,072");
        assert_eq!(reference, "1,072");
        assert_eq!(f.score(&reference, "so the total is 1072.\n#### 1072"), 1.0);
        assert_eq!(f.score(&reference, "The answer is $1,072."), 1.0);
        assert_eq!(f.score(&reference, "#### 1071"), 0.0);
        assert_eq!(f.score(&reference, "no idea"), 0.0);
        assert_eq!(f.extract("it fell by -3 degrees"), Some("-3".into()));
        assert_eq!(f.score("72", "72.0"), 1.0);
    }

    #[test]
    fn boxed_answers_with_nested_braces() {
        let f = AnswerFormat::Boxed;
        assert_eq!(f.extract("so $\\boxed{\\frac{1}{2}}$."), Some("\\frac{1}{2}".into()));
        assert_eq!(f.score("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}"), 1.0);
        assert_eq!(f.score("(1, 2)", "\\boxed{(1,2)}"), 1.0);
        assert_eq!(f.score("3", "first \\boxed{2}, then \\boxed{3}"), 1.0);
        assert_eq!(f.score("3", "\\boxed{3"), 0.0);
        assert_eq!(f.score("3", "3"), 0.0);
    }

    #[test]
    fn exact_answers_compare_trimmed() {
        let f = AnswerFormat::Exact;
        assert_eq!(f.score("Paris", " Paris\n"), 1.0);
        assert_eq!(f.score("Paris", "paris"), 0.0);
    }
}
