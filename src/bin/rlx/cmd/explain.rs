//! `rlx explain [CODE]`: what a diagnostic code means, from the one registry of codes — its
//! origin, summary and explanation, and a recipe that triggers it with what `rlx lint` prints;
//! without a code, every code and lint.

use std::process::ExitCode;

use rlx::diag::codes;
use rlx::diag::{Code, Kind};

use crate::args::ExplainArgs;

pub fn main(args: ExplainArgs) -> Result<ExitCode, String> {
    let Some(name) = args.code else {
        if args.format.json() {
            println!("{}", json(&codes::all().iter().copied().map(entry).collect::<Vec<_>>())?);
        } else {
            print!("{}", index());
        }
        return Ok(ExitCode::SUCCESS);
    };
    let Some(code) = codes::code(&name) else {
        let hint = rlx::diag::did_you_mean(&name, codes::all().iter().map(|c| c.name))
            .map_or(String::new(), |m| format!("; did you mean `{m}`?"));
        return Err(format!("no diagnostic code `{name}`{hint} (`rlx explain` lists them)"));
    };
    if args.format.json() {
        println!("{}", json(&entry(code))?);
    } else {
        print!("{}", page(code));
    }
    Ok(ExitCode::SUCCESS)
}

fn json(value: &impl serde::Serialize) -> Result<String, String> {
    serde_json::to_string_pretty(value).map_err(|e| e.to_string())
}

/// Every code, grouped by where it comes from.
fn index() -> String {
    let groups = [
        ("Lints (`--allow`, `--deny`, `# rlx: allow(NAME)`)", true),
        ("Errors and warnings", false),
    ];
    let mut out = String::new();
    for (title, lints) in groups {
        out.push_str(&format!("{title}:\n"));
        for c in codes::all().iter().filter(|c| c.lint_default().is_some() == lints) {
            let level = match c.kind {
                Kind::Lint(s) => format!("{s:?}").to_lowercase(),
                _ => short(c.kind).to_string(),
            };
            out.push_str(&format!("  {:<28} {:<9} {}\n", c.name, level, c.summary));
        }
        out.push('\n');
    }
    out.push_str("`rlx explain CODE` explains one, with an example.\n");
    out
}

fn short(kind: Kind) -> &'static str {
    match kind {
        Kind::Syntax => "syntax",
        Kind::Lowering => "names",
        Kind::Check => "check",
        Kind::Lint(_) => "lint",
        Kind::Evaluation => "eval",
        Kind::Run => "run",
        Kind::Export => "verl",
        Kind::Remote => "tinker",
    }
}

/// One code in full.
fn page(c: &Code) -> String {
    let mut out = format!(
        "{}: {}\n\nFrom {}.\n\n{}",
        c.name,
        c.summary,
        c.kind.describe(),
        wrap(c.explanation, 92)
    );
    if let Some(f) = c.fragment {
        out.push_str(&format!("\nFor instance:\n\n{}\n", indent(f)));
    }
    if let Some(e) = &c.example {
        out.push_str(&format!(
            "\nExample (tests/ui/{}.rlx):\n\n{}\n`rlx lint` reports:\n\n{}",
            e.case,
            indent(e.recipe),
            indent(e.output)
        ));
    }
    out
}

/// `text` with line breaks between words so no line is longer than `width` (a longer word
/// stays whole).
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        if line > 0 && line + 1 + len > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += len;
    }
    out.push('\n');
    out
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| if l.is_empty() { "\n".to_string() } else { format!("    {l}\n") })
        .collect()
}

#[derive(serde::Serialize)]
struct Entry {
    name: &'static str,
    from: &'static str,
    /// A lint's default level.
    default: Option<String>,
    summary: &'static str,
    explanation: &'static str,
    fragment: Option<&'static str>,
    example: Option<&'static str>,
    example_output: Option<&'static str>,
}

fn entry(c: &'static Code) -> Entry {
    Entry {
        name: c.name,
        from: short(c.kind),
        default: c.lint_default().map(|s| format!("{s:?}").to_lowercase()),
        summary: c.summary,
        explanation: c.explanation,
        fragment: c.fragment,
        example: c.example.as_ref().map(|e| e.recipe),
        example_output: c.example.as_ref().map(|e| e.output),
    }
}
