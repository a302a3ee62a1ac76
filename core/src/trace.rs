//! Trace files: JSON Lines of trace format v1, read and written.

use std::io::{self, BufRead, Read as _, Write};

use crate::event::{Event, EventKind};

/// Longest line accepted. An event is a few hundred bytes; a longer line is not a trace (a
/// binary file, a missing newline), and reading it whole would let one line take any memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// How far `ts_ns` may step back from the latest earlier event. Across CPUs the kernel delivers
/// events a few microseconds out of order; a step back of a second is a corrupt or spliced file.
pub const MAX_STEP_BACK_NS: u64 = 1_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("line {line}: {message}")]
    Malformed { line: usize, message: String },
    #[error("line {line}: longer than {MAX_LINE_BYTES} bytes; a trace line is one event of a few hundred bytes (is this a faultline trace?)")]
    TooLong { line: usize },
    #[error("line {line}: not UTF-8 text; a trace is JSON Lines (is this a faultline trace?)")]
    NotUtf8 { line: usize },
    #[error("line {line}: the file ends in the middle of an event (truncated: {message})")]
    Truncated { line: usize, message: String },
    #[error("line {line}: ts_ns {ts_ns} is {back_ms} ms before line {earlier_line}'s {earlier_ts_ns}; events must be in time order (a corrupt or concatenated file?)")]
    OutOfOrder {
        line: usize,
        ts_ns: u64,
        earlier_line: usize,
        earlier_ts_ns: u64,
        back_ms: u64,
    },
    #[error("line {line}: read failed: {source}")]
    Io {
        line: usize,
        #[source]
        source: io::Error,
    },
}

/// Reads events one line at a time; blank lines are skipped. Errors name the 1-based line, and
/// the first error ends the iteration (what follows a corrupt line cannot be trusted).
pub struct TraceReader<R> {
    input: R,
    line: usize,
    buf: Vec<u8>,
    /// The latest timestamp so far and its line.
    latest: Option<(u64, usize)>,
    failed: bool,
    /// The trace opened with a `journal` event: events are in the order an agent applied them,
    /// where a wait's real start learned late comes after later events, so time may step back.
    applied_order: bool,
    /// Whether a last line cut short is set aside (`cut_line`) instead of being an error.
    lenient: bool,
    cut: Option<TraceError>,
}

impl<R: BufRead> TraceReader<R> {
    /// A strict reader: every line must be a whole event.
    pub fn new(input: R) -> Self {
        Self {
            input,
            line: 0,
            buf: Vec::new(),
            latest: None,
            failed: false,
            applied_order: false,
            lenient: false,
            cut: None,
        }
    }

    /// A reader that ends quietly at a last line cut short (no newline, and the file ends inside
    /// the event): what a recorder stopped mid-write leaves (a full disk, SIGKILL). The complete
    /// lines before it are the trace; `cut_line` says what was set aside. A bad line anywhere
    /// else, or a whole last line that is wrong, is still an error.
    pub fn lenient(input: R) -> Self {
        Self {
            lenient: true,
            ..Self::new(input)
        }
    }

    /// Number of the last line read.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The last line a lenient reader set aside because it was cut short, and why it did not
    /// parse.
    pub fn cut_line(&self) -> Option<&TraceError> {
        self.cut.as_ref()
    }

    /// `cut_line`, owned, once reading is over.
    pub fn into_cut_line(self) -> Option<TraceError> {
        self.cut
    }

    fn next_event(&mut self) -> Option<Result<Event, TraceError>> {
        loop {
            self.buf.clear();
            self.line += 1;
            let line = self.line;
            // Bounded read: at most one byte past the limit, so a huge line costs no memory.
            let limit = MAX_LINE_BYTES as u64 + 1;
            match (&mut self.input)
                .take(limit)
                .read_until(b'\n', &mut self.buf)
            {
                Ok(0) => return None,
                Ok(_) => {}
                Err(source) => return Some(Err(TraceError::Io { line, source })),
            }
            let complete = self.buf.last() == Some(&b'\n');
            if !complete && self.buf.len() > MAX_LINE_BYTES {
                return Some(Err(TraceError::TooLong { line }));
            }
            let text = match std::str::from_utf8(&self.buf) {
                Ok(text) => text,
                // A character cut in two at the very end: the file stops mid-event.
                Err(e) if !complete && e.error_len().is_none() => {
                    return Some(Err(TraceError::Truncated {
                        line,
                        message: "a character cut in two".into(),
                    }))
                }
                Err(_) => return Some(Err(TraceError::NotUtf8 { line })),
            };
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let ev: Event = match serde_json::from_str(text) {
                Ok(ev) => ev,
                Err(e) => {
                    let message = json_message(&e);
                    return Some(Err(if !complete && e.is_eof() {
                        TraceError::Truncated { line, message }
                    } else {
                        TraceError::Malformed { line, message }
                    }));
                }
            };
            if self.latest.is_none() && matches!(ev.kind, EventKind::Journal {}) {
                self.applied_order = true;
            }
            if let Some((latest, earlier_line)) = self.latest.filter(|_| !self.applied_order) {
                if latest.saturating_sub(ev.ts_ns) > MAX_STEP_BACK_NS {
                    return Some(Err(TraceError::OutOfOrder {
                        line,
                        ts_ns: ev.ts_ns,
                        earlier_line,
                        earlier_ts_ns: latest,
                        back_ms: (latest - ev.ts_ns) / 1_000_000,
                    }));
                }
            }
            if self.latest.is_none_or(|(t, _)| ev.ts_ns >= t) {
                self.latest = Some((ev.ts_ns, line));
            }
            return Some(Ok(ev));
        }
    }
}

/// serde_json's message without its "at line 1 column N" (the line is ours; the column helps).
fn json_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let base = full
        .rsplit_once(" at line ")
        .map(|(m, _)| m.to_owned())
        .unwrap_or(full);
    let base = match base.strip_prefix("unknown variant ") {
        Some(rest) => format!("unknown kind {rest}"),
        None => base,
    };
    if e.column() > 0 {
        format!("{base} (column {})", e.column())
    } else {
        base
    }
}

impl<R: BufRead> Iterator for TraceReader<R> {
    type Item = Result<Event, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.next_event();
        self.failed = matches!(item, Some(Err(_)));
        match item {
            // Without its newline the line is the file's last: a cut tail, not corruption.
            Some(Err(e @ TraceError::Truncated { .. })) if self.lenient => {
                self.cut = Some(e);
                None
            }
            item => item,
        }
    }
}

/// Writes one event per line.
pub struct TraceWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> TraceWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, written: 0 }
    }

    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")?;
        self.written += 1;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// The output, to write out what has been buffered (`TraceWriter<Vec<u8>>`).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Addr, EventKind, LockMode};

    #[test]
    fn a_written_trace_reads_back_identically() {
        let events: Vec<Event> = (0..3)
            .map(|i| Event {
                ts_ns: i,
                tid: 7,
                pid: 7,
                comm: None,
                kind: EventKind::MmapLockRelease {
                    mm: Addr(0x1000),
                    mode: LockMode::Read,
                    mm_pid: None,
                },
            })
            .collect();
        let mut w = TraceWriter::new(Vec::new());
        for e in &events {
            w.write(e).expect("write");
        }
        let bytes = w.finish().expect("flush");
        let back: Vec<Event> = TraceReader::new(&bytes[..])
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(back, events);
    }

    #[test]
    fn malformed_and_unknown_kinds_name_their_line() {
        let input = "\n{\"ts_ns\":1,\"tid\":1,\"pid\":1,\"kind\":\"task_exit\"}\n{\"ts_ns\":2,\"tid\":1,\"pid\":1,\"kind\":\"teleport\"}\nnot json\n";
        let results: Vec<_> = TraceReader::new(input.as_bytes()).collect();
        assert!(results[0].is_ok());
        let unknown = results[1].as_ref().expect_err("unknown kind");
        assert!(
            unknown
                .to_string()
                .starts_with("line 3: unknown kind `teleport`"),
            "{unknown}"
        );
        assert_eq!(results.len(), 2, "the first error ends the trace");
        let garbage =
            first_error("{\"ts_ns\":1,\"tid\":1,\"pid\":1,\"kind\":\"task_exit\"}\nnot json\n");
        assert!(garbage.starts_with("line 2:"), "{garbage}");
    }

    fn first_error(input: &str) -> String {
        TraceReader::new(input.as_bytes())
            .find_map(Result::err)
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    const EXIT: &str = r#"{"ts_ns":5000000000,"tid":1,"pid":1,"kind":"task_exit"}"#;

    #[test]
    fn a_huge_line_is_one_error_naming_its_line_without_reading_it_whole() {
        let mut input = format!("{EXIT}\n");
        input.push_str(&"x".repeat(10 * MAX_LINE_BYTES));
        let err = first_error(&input);
        assert!(err.starts_with("line 2: longer than 65536 bytes"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_line_and_the_field() {
        let err = first_error(&format!(
            "{EXIT}\n{{\"ts_ns\":\"soon\",\"tid\":1,\"pid\":1,\"kind\":\"task_exit\"}}\n"
        ));
        assert!(
            err.starts_with("line 2: invalid type: string \"soon\", expected u64"),
            "{err}"
        );
        assert!(!err.contains("line 1 column"), "{err}");
        let err = first_error(r#"{"ts_ns":1,"tid":4294967296,"pid":1,"kind":"task_exit"}"#);
        assert!(err.starts_with("line 1: invalid value"), "{err}");
    }

    #[test]
    fn a_big_step_back_in_time_is_an_error_and_a_small_one_is_not() {
        let at =
            |ts: u64| format!("{{\"ts_ns\":{ts},\"tid\":1,\"pid\":1,\"kind\":\"task_exit\"}}\n");
        let jitter = format!(
            "{}{}{}",
            at(5_000_000_000),
            at(4_999_990_000),
            at(5_000_000_001)
        );
        assert!(TraceReader::new(jitter.as_bytes()).all(|r| r.is_ok()));
        let err = first_error(&format!(
            "{}{}{}",
            at(5_000_000_000),
            at(6_000_000_000),
            at(1_000)
        ));
        assert!(
            err.starts_with("line 3: ts_ns 1000 is 5999 ms before line 2's 6000000000"),
            "{err}"
        );
    }

    #[test]
    fn an_agent_journal_may_step_back_in_time_but_only_when_it_says_so_first() {
        let at =
            |ts: u64| format!("{{\"ts_ns\":{ts},\"tid\":1,\"pid\":1,\"kind\":\"task_exit\"}}\n");
        let journal = "{\"ts_ns\":1,\"tid\":0,\"pid\":0,\"kind\":\"journal\"}\n";
        // A wait a snapshot found, applied with its real start 5 s back.
        let backdated = format!("{journal}{}{}", at(6_000_000_000), at(1_000_000_000));
        assert!(TraceReader::new(backdated.as_bytes()).all(|r| r.is_ok()));
        let journal_later = journal.replace("\"ts_ns\":1,", "\"ts_ns\":6000000000,");
        let late = format!("{}{journal_later}{}", at(6_000_000_000), at(1_000_000_000));
        assert!(first_error(&late).starts_with("line 3: ts_ns 1000000000 is 5000 ms before"));
    }

    #[test]
    fn a_truncated_last_line_says_so() {
        let err = first_error(&format!("{EXIT}\n{}", &EXIT[..30]));
        assert!(
            err.starts_with("line 2: the file ends in the middle of an event"),
            "{err}"
        );
        // A complete last event without its newline is fine.
        assert!(TraceReader::new(EXIT.as_bytes()).all(|r| r.is_ok()));
    }

    #[test]
    fn a_lenient_reader_sets_a_cut_last_line_aside_and_keeps_the_lines_before_it() {
        let input = format!("{EXIT}\n{EXIT}\n{}", &EXIT[..30]);
        let mut r = TraceReader::lenient(input.as_bytes());
        let events: Vec<Event> = r.by_ref().collect::<Result<_, _>>().expect("the prefix");
        assert_eq!(events.len(), 2);
        let cut = r.cut_line().expect("the cut line is reported").to_string();
        assert!(
            cut.starts_with("line 3: the file ends in the middle of an event"),
            "{cut}"
        );
        // A character cut in two is a cut too.
        let mut bytes = format!("{EXIT}\n{{\"ts_ns\":1,\"comm\":\"").into_bytes();
        bytes.extend_from_slice(&"é".as_bytes()[..1]);
        let mut r = TraceReader::lenient(&bytes[..]);
        assert_eq!(r.by_ref().filter(Result::is_ok).count(), 1);
        assert!(r.cut_line().is_some());
        let strict = TraceReader::new(&bytes[..]).find_map(Result::err);
        assert!(matches!(
            strict,
            Some(TraceError::Truncated { line: 2, .. })
        ));
    }

    #[test]
    fn a_lenient_reader_still_refuses_bad_lines_that_are_not_a_cut_end() {
        // In the middle, even when the line looks cut.
        let mid = format!("{EXIT}\n{}\n{EXIT}\n", &EXIT[..30]);
        let err = TraceReader::lenient(mid.as_bytes()).find_map(Result::err);
        assert!(
            matches!(err, Some(TraceError::Malformed { line: 2, .. })),
            "{err:?}"
        );
        // A whole last event that is wrong, newline or not.
        let whole = format!("{EXIT}\n{}", EXIT.replace("task_exit", "teleport"));
        let mut r = TraceReader::lenient(whole.as_bytes());
        let err = r.by_ref().find_map(Result::err);
        assert!(
            matches!(err, Some(TraceError::Malformed { line: 2, .. })),
            "{err:?}"
        );
        assert!(r.cut_line().is_none());
        // Bytes that are not text at the end are not a cut character.
        let binary = [EXIT.as_bytes(), b"\n\xff\xfe"].concat();
        let err = TraceReader::lenient(&binary[..]).find_map(Result::err);
        assert!(
            matches!(err, Some(TraceError::NotUtf8 { line: 2 })),
            "{err:?}"
        );
    }

    #[test]
    fn binary_input_is_not_utf8_text() {
        let err = first_error("\u{0}\u{1}\n");
        assert!(err.starts_with("line 1:"), "{err}");
        let bytes = [0xffu8, 0xfe, b'\n'];
        let err = TraceReader::new(&bytes[..])
            .find_map(Result::err)
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("line 1: not UTF-8"), "{err}");
    }
}
