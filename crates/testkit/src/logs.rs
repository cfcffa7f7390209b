//! The nodes' log files: finding the lines that fail a test (an `ERROR`
//! the test did not expect, a panic, a server that exited with an error),
//! and printing the logs when a test fails.
//!
//! Nodes log through `tracing`'s plain formatter
//! (`<timestamp> <LEVEL> <message> <fields>`) unless `COFFER_IT_LOG_FORMAT`
//! asks for JSON lines, whose `"level":"ERROR"` is found too; the harness sets `NO_COLOR`,
//! and escape sequences are stripped anyway so that a colour setting can
//! never hide a line from the scan.

use std::path::{Path, PathBuf};

/// How many trailing lines of each log a failure prints.
const TAIL_LINES: usize = 60;

/// Every `*.log` file in `dir`, sorted by name.
pub fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "log")).collect())
        .unwrap_or_default();
    logs.sort();
    logs
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            // Skip the `[`, the parameters, and the final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Whether a (stripped) log line means something went wrong in a node: an
/// `ERROR` event, a panic, or the binary's own fatal error line.
pub fn is_failure_line(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let text_error = words.next().is_some() && words.next() == Some("ERROR");
    // A JSON line (`--log-format json`) names its level in a field.
    let json_error = line.trim_start().starts_with('{') && line.contains("\"level\":\"ERROR\"");
    let level_is_error = text_error || json_error;
    level_is_error || line.contains("panicked at") || line.starts_with("coffer: error:")
}

/// The failure lines of every log in `dir` that match none of `expected`
/// (substrings), each prefixed with its file's name.
pub fn unexpected_failures(dir: &Path, expected: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for log in log_files(dir) {
        let name = log.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for line in text.lines().map(strip_ansi) {
            if is_failure_line(&line) && !expected.iter().any(|e| line.contains(e.as_str())) {
                out.push(format!("{name}: {line}"));
            }
        }
    }
    out
}

/// Prints the tail of every log in `dir` to stderr (which the test harness
/// shows for a failed test).
pub fn dump(dir: &Path) {
    for log in log_files(dir) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(strip_ansi).collect();
        let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
        eprintln!("===== {} (last {} of {} lines)\n{}", log.display(), tail.len(), lines.len(), tail.join("\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_found_in_colour_and_plain() {
        let coloured = "\u{1b}[2m2026-12-01T09:33:07.070200Z\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m shard request failed";
        assert!(is_failure_line(&strip_ansi(coloured)));
        assert!(is_failure_line("2026-12-01T09:33:07Z ERROR catalog holds an undecodable record"));
        assert!(is_failure_line("thread 'tokio-runtime-worker' panicked at crates/x.rs:1:1:"));
        assert!(is_failure_line("coffer: error: start metadata node"));
        assert!(!is_failure_line("2026-12-01T09:33:07Z  WARN shard request refused error=ERROR in a field"));
        assert!(!is_failure_line("2026-12-01T09:33:07Z  INFO metadata node serving"));
        assert!(is_failure_line(r#"{"timestamp":"t","level":"ERROR","fields":{"message":"m"},"target":"coffer_meta"}"#));
        assert!(!is_failure_line(r#"{"timestamp":"t","level":"WARN","fields":{"message":"level ERROR"}}"#));
    }

    #[test]
    fn expected_patterns_allow_only_their_lines() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("storage-a.log"),
            "t ERROR shard request failed rpc=\"GetShard\" error=checksum mismatch\nt  INFO fine\nt ERROR other\n",
        )?;
        std::fs::write(dir.path().join("not-a-log.txt"), "t ERROR ignored\n")?;
        let all = unexpected_failures(dir.path(), &[]);
        assert_eq!(all.len(), 2, "{all:?}");
        let rest = unexpected_failures(dir.path(), &["checksum mismatch".to_string()]);
        assert_eq!(rest, ["storage-a.log: t ERROR other"]);
        Ok(())
    }
}
