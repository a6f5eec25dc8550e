//! Splitting a fly.toml command line into arguments, as flyctl does it: with
//! github.com/google/shlex (the version flyctl's go.mod pins, e7afc7f), whose `Split` flyctl
//! calls for `[processes]` commands (`internal/appconfig/processgroups.go`, `InitCmd`) and
//! `[deploy] release_command` (`internal/appconfig/machines.go`, `ToReleaseMachineConfig`;
//! `validation.go`). Its rules differ from a POSIX shell's (and from the `shell_words` crate's):
//!
//! - a backslash inside double quotes escapes any character, not only `$`, `` ` ``, `"`, `\`
//!   and newline: `"a\tb"` is `atb`;
//! - outside quotes, a backslash before a newline keeps the newline (no line continuation);
//! - `\r` separates words, as space, tab and newline do;
//! - `#` starts a comment only where a word would start; the comment runs to the next newline;
//! - `''` and `""` are an empty argument.

use std::fmt;

/// Why a command line cannot be split; the texts are google/shlex's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitError {
    /// A backslash is the last character.
    TrailingEscape,
    /// A quote is never closed.
    UnclosedQuote,
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SplitError::TrailingEscape => "EOF found after escape character",
            SplitError::UnclosedQuote => "EOF found when expecting closing quote",
        })
    }
}

impl std::error::Error for SplitError {}

/// google/shlex's lexer states (`scanStream`).
#[derive(Clone, Copy)]
enum State {
    /// Between words.
    Start,
    /// In a word, outside quotes.
    Word,
    /// After a backslash outside quotes.
    Escaping,
    /// After a backslash inside double quotes.
    EscapingQuoted,
    /// Inside double quotes.
    DoubleQuoted,
    /// Inside single quotes.
    SingleQuoted,
    /// In a comment, up to the next newline.
    Comment,
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// `shlex.Split`: the words of `line`, comments left out.
pub fn split(line: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut state = State::Start;
    for c in line.chars() {
        state = match (state, c) {
            (State::Start, c) if is_space(c) => State::Start,
            (State::Start, '"') => State::DoubleQuoted,
            (State::Start, '\'') => State::SingleQuoted,
            (State::Start, '\\') => State::Escaping,
            (State::Start, '#') => State::Comment,
            (State::Start, c) => {
                word.push(c);
                State::Word
            }
            (State::Word, c) if is_space(c) => {
                words.push(std::mem::take(&mut word));
                State::Start
            }
            (State::Word, '"') => State::DoubleQuoted,
            (State::Word, '\'') => State::SingleQuoted,
            (State::Word, '\\') => State::Escaping,
            (State::Word, c) => {
                word.push(c);
                State::Word
            }
            (State::Escaping, c) => {
                word.push(c);
                State::Word
            }
            (State::EscapingQuoted, c) => {
                word.push(c);
                State::DoubleQuoted
            }
            (State::DoubleQuoted, '"') => State::Word,
            (State::DoubleQuoted, '\\') => State::EscapingQuoted,
            (State::DoubleQuoted, c) => {
                word.push(c);
                State::DoubleQuoted
            }
            (State::SingleQuoted, '\'') => State::Word,
            (State::SingleQuoted, c) => {
                word.push(c);
                State::SingleQuoted
            }
            (State::Comment, '\n') => State::Start,
            (State::Comment, _) => State::Comment,
        };
    }
    match state {
        State::Start | State::Comment => {}
        State::Word => words.push(word),
        State::Escaping | State::EscapingQuoted => return Err(SplitError::TrailingEscape),
        State::DoubleQuoted | State::SingleQuoted => return Err(SplitError::UnclosedQuote),
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::{SplitError, split};

    fn words(line: &str) -> Vec<String> {
        split(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// google/shlex's own test string and the words its `TestSplit` expects of it.
    #[test]
    fn google_shlex_test_string() {
        let line = "one two \"three four\" \"five \\\"six\\\"\" seven#eight # nine # ten\n eleven 'twelve\\' thirteen=13 fourteen/14";
        assert_eq!(
            words(line),
            [
                "one",
                "two",
                "three four",
                "five \"six\"",
                "seven#eight",
                "eleven",
                "twelve\\",
                "thirteen=13",
                "fourteen/14"
            ]
        );
    }

    /// Where google/shlex and a POSIX shell (and the shell_words crate nixfly used before)
    /// part ways; each expectation follows google/shlex's state machine.
    #[test]
    fn where_shlex_is_not_a_shell() {
        // Any character after a backslash in double quotes is taken literally.
        assert_eq!(words(r#"printf "a\tb""#), ["printf", "atb"]);
        assert_eq!(words(r#"echo "\$HOME""#), ["echo", "$HOME"]);
        // No line continuation: the newline is kept in the word.
        assert_eq!(words("a\\\nb"), ["a\nb"]);
        // \r separates words.
        assert_eq!(words("a\rb"), ["a", "b"]);
        // Empty quotes are an empty argument; adjacent quoting joins one word.
        assert_eq!(words(r#"run "" '' x"y"'z'"#), ["run", "", "", "xyz"]);
        // A comment starts only where a word would.
        assert_eq!(words("bin/app a#b # the rest\nc"), ["bin/app", "a#b", "c"]);
        assert_eq!(words("   "), Vec::<String>::new());
        assert_eq!(words("# only a comment"), Vec::<String>::new());
    }

    #[test]
    fn errors_are_google_shlexs() {
        assert_eq!(split("a \\"), Err(SplitError::TrailingEscape));
        assert_eq!(split("a \"b\\"), Err(SplitError::TrailingEscape));
        assert_eq!(split("a 'b"), Err(SplitError::UnclosedQuote));
        assert_eq!(split("a \"b"), Err(SplitError::UnclosedQuote));
        assert_eq!(
            SplitError::UnclosedQuote.to_string(),
            "EOF found when expecting closing quote"
        );
    }
}
