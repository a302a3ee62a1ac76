//! `faultline replay` on what recordings really leave behind: a last line cut short by a recorder
//! stopped mid-write (replayed up to it with a warning; `--strict` refuses), and `lost` records
//! where the ring buffer dropped records (counted, and said to qualify the alerts after them).

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Output, Stdio},
};

const FAULTLINE: &str = env!("CARGO_BIN_EXE_faultline");
const SEED: &str = include_str!("traces/uffd-cross-process-deadlock.jsonl");

fn faultline(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(FAULTLINE)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run faultline");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin piped");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait faultline")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write trace");
    path.to_str().expect("utf-8 temp path").to_owned()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

fn kinds(doc: &serde_json::Value) -> Vec<String> {
    doc["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["kind"].as_str().map(str::to_owned))
        .collect()
}

/// The seed plus the first 60 bytes of one more event, as a recorder killed mid-write leaves it.
fn cut_seed() -> String {
    let line = r#"{"ts_ns":3000000100,"tid":99,"pid":99,"comm":"other","kind":"page_fault","addr":"0x7f0000002000","user":true,"error_code":6}"#;
    format!("{SEED}{}", &line[..60])
}

#[test]
fn a_cut_last_line_warns_once_and_the_complete_lines_before_it_are_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cut = write(dir.path(), "cut.jsonl", &cut_seed());
    let whole = json(&faultline(
        &["replay", "--json", &write(dir.path(), "seed.jsonl", SEED)],
        None,
    ));
    for (args, stdin) in [
        (vec!["replay", "--json", cut.as_str()], None),
        (vec!["replay", "--json", "-"], Some(cut_seed())),
    ] {
        let out = faultline(&args, stdin.as_deref());
        let doc = json(&out);
        assert_eq!(doc["events"], 9, "the nine complete lines: {doc:#}");
        assert_eq!(kinds(&doc), kinds(&whole), "what the complete lines say");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one warning line: {err}");
        assert!(
            err.starts_with("faultline: warning: ")
                && err.contains("line 10: the file ends in the middle of an event")
                && err.contains("ignored")
                && err.contains("--strict"),
            "names the line, says it was ignored and what refuses it: {err}"
        );
    }
}

#[test]
fn strict_refuses_a_cut_last_line_with_one_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cut = write(dir.path(), "cut.jsonl", &cut_seed());
    for args in [
        vec!["replay", "--strict", cut.as_str()],
        vec!["replay", "--strict", "--html", "/dev/null", cut.as_str()],
    ] {
        let out = faultline(&args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.starts_with("faultline: error: ")
                && err.contains("line 10: the file ends in the middle of an event"),
            "{err}"
        );
    }
}

#[test]
fn a_bad_line_in_the_middle_is_still_an_error_naming_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lines: Vec<&str> = SEED.lines().collect();
    // The same cut as a killed recorder leaves, but with events after it: corruption.
    let broken = &lines[4][..50];
    lines[4] = broken;
    let path = write(dir.path(), "mid.jsonl", &(lines.join("\n") + "\n"));
    let out = faultline(&["replay", &path], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("line 5:"), "names the line: {err}");
}

#[test]
fn lost_records_are_summed_and_said_to_qualify_the_alerts_after_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clean = json(&faultline(
        &["replay", "--json", &write(dir.path(), "seed.jsonl", SEED)],
        None,
    ));
    assert_eq!(clean["lost"], 0, "{clean:#}");
    assert_eq!(clean["warnings"], serde_json::json!([]), "{clean:#}");

    let lossy = format!(
        "{{\"ts_ns\":900000000,\"tid\":0,\"pid\":0,\"kind\":\"lost\",\"count\":3}}\n\
         {{\"ts_ns\":900000500,\"tid\":0,\"pid\":0,\"kind\":\"lost\",\"count\":4}}\n{SEED}"
    );
    let path = write(dir.path(), "lossy.jsonl", &lossy);
    let doc = json(&faultline(&["replay", "--json", &path], None));
    assert_eq!(doc["lost"], 7, "the sum of the counts: {doc:#}");
    assert_eq!(doc["first_loss_ts_ns"], 900_000_000u64);
    let warnings = doc["warnings"].to_string();
    assert!(
        warnings.contains("7 records were lost")
            && warnings.contains("may rest on missing records"),
        "{doc:#}"
    );
    assert!(!kinds(&doc).is_empty(), "the seed still raises its alerts");

    let text = faultline(&["replay", &path], None);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("warning: 7 records were lost") && text.contains("(after a loss of records)"),
        "the loss and the alerts it qualifies: {text}"
    );

    let html = dir.path().join("report.html");
    let out = faultline(
        &["replay", "--html", html.to_str().expect("utf-8"), &path],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).expect("report written");
    assert!(
        page.contains("7 records were lost while recording"),
        "the report says it"
    );
}
