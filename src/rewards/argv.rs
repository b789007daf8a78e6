//! A reward command's argument vector from the one string a recipe writes
//! (`command("python3 -m rlx_reward my_rewards:accuracy")`): split like a POSIX shell splits
//! words — whitespace separates, single quotes keep everything, double quotes keep everything
//! but `\"` and `\\`, a backslash outside quotes escapes the next character — and nothing else.
//! No shell runs: no variables, globs, pipes or redirections, and data never enters the vector
//! (it travels on the process's stdin).

/// The words of `line`, or what is wrong with it.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("a single quote is not closed".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("a double quote is not closed".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("a double quote is not closed".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("the command ends in a lone backslash".into()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn words_quotes_and_escapes_split_as_a_shell_would_without_running_one() {
        assert_eq!(
            split("python3 -m rlx_reward  my:f").unwrap(),
            ["python3", "-m", "rlx_reward", "my:f"]
        );
        assert_eq!(
            split(r#"a 'b c' "d \"e\" \n" f\ g"#).unwrap(),
            ["a", "b c", "d \"e\" \\n", "f g"]
        );
        assert_eq!(split("x '' y").unwrap(), ["x", "", "y"]);
        assert_eq!(split("echo $HOME; rm *").unwrap(), ["echo", "$HOME;", "rm", "*"]);
        assert!(split("  ").unwrap_err().contains("empty"));
        assert!(split("a 'b").unwrap_err().contains("single quote"));
        assert!(split("a \"b").unwrap_err().contains("double quote"));
        assert!(split("a \\").unwrap_err().contains("backslash"));
    }
}
