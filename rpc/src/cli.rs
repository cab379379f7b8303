//! What every shardfs program does the same way at its start and end: logging to stderr
//! (coloured only on a terminal), and a failure reported on one line with a non-zero exit.

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// Logs to stderr at `default_filter` unless `RUST_LOG` says otherwise; colour codes only
/// when stderr is a terminal, so a log file or journal gets plain text.
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// `error` and its causes on one line, each said once: a cause that a message already
/// quotes (`cannot connect to X: Connection refused`) is not repeated after it.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Prints `program: error: …` on one line and gives the exit code for a failure.
pub fn fail(program: &str, error: &anyhow::Error) -> ExitCode {
    eprintln!("{program}: error: {}", one_line(error));
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_the_message_quotes_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = crate::Error::Connect { addr: "127.0.0.1:1".into(), source: io };
        let error = anyhow::Error::new(error).context("cannot reach metad");
        let line = one_line(&error);
        assert_eq!(line.matches("refused").count(), 1, "{line}");
        assert!(line.starts_with("cannot reach metad: cannot connect to 127.0.0.1:1: "), "{line}");
    }
}
