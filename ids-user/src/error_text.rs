//! An error as one line for people: its message, then each cause that the text so far does not
//! already say. An error type that puts its source in its own message (`reading config X:
//! {source}`) and also reports it as its source would otherwise be printed with the cause twice
//! (`... (os error 2): No such file or directory (os error 2)`), which `{:#}` does.
use std::error::Error;

/// `error` and its causes, each said once, joined by `: `.
pub fn one_line(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let said = current.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading config {path}: {source}")]
    struct Read {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_already_says_is_not_repeated() {
        let missing = std::fs::read("/nonexistent/ids.toml").unwrap_err();
        let error = anyhow::Error::new(Read { path: "/nonexistent/ids.toml".into(), source: missing });
        assert_eq!(
            format!("{error:#}"),
            "reading config /nonexistent/ids.toml: No such file or directory (os error 2): No such file or directory (os error 2)",
            "the repetition this module exists for"
        );
        assert_eq!(
            one_line(error.as_ref()),
            "reading config /nonexistent/ids.toml: No such file or directory (os error 2)"
        );
        let context = error.context("no daemon answered; opening the ban store");
        assert_eq!(
            one_line(context.as_ref()),
            "no daemon answered; opening the ban store: reading config /nonexistent/ids.toml: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn causes_not_yet_said_are_appended_in_order() {
        let error = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(one_line(error.as_ref()), "outer: middle: inner");
    }
}
