//! The pictures as a person sees them: headless Chromium loads the live page of an agent watching
//! a real deadlock, and the HTML report of the seed deadlock trace; the tests assert on the
//! rendered DOM and keep screenshots under `target/tmp/screenshots/` to look at.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{require_root, scenario_lingering, u64_at, Faultline, FAULTLINE};

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/traces/uffd-cross-process-deadlock.jsonl"
);

/// Debian's chromium. In CI (`CI=true`) a missing browser fails the test: `cargo xtask setup`
/// installs it.
fn chromium(test: &str) -> Option<&'static str> {
    let path = "/usr/bin/chromium";
    if Path::new(path).exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {path} is missing; `cargo xtask setup` installs it");
    }
    eprintln!("skipping {test}: needs {path} (cargo xtask setup installs it)");
    None
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// Runs headless Chromium with a throw-away profile; `extra` picks what it does.
fn run_chromium(browser: &str, url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let profile_arg = format!("--user-data-dir={}", profile.path().display());
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            &profile_arg,
        ])
        .args(extra)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    // Drain stdout while it runs: a large DOM would fill the pipe and stall the browser.
    let mut stdout = child.stdout.take().expect("stdout piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut out);
        out
    });
    // Bounded: a browser that hangs fails the test instead of stalling the suite.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("poll chromium").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish with {url} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = reader.join().expect("stdout reader");
    String::from_utf8_lossy(&out).into_owned()
}

/// The DOM after the page's scripts ran for `budget_ms` of virtual time.
fn dump_dom(browser: &str, url: &str, budget_ms: u32) -> String {
    let budget = format!("--virtual-time-budget={budget_ms}");
    let dom = run_chromium(browser, url, &["--dump-dom", &budget]);
    assert!(
        dom.contains("</"),
        "chromium rendered nothing for {url}: {dom:?}"
    );
    dom
}

fn screenshot(browser: &str, url: &str, name: &str, size: &str) -> PathBuf {
    let path = screenshots().join(name);
    let _ = std::fs::remove_file(&path);
    let shot = format!("--screenshot={}", path.display());
    let window = format!("--window-size={size}");
    run_chromium(browser, url, &[&shot, &window]);
    assert!(
        std::fs::metadata(&path).is_ok_and(|m| m.len() > 10_000),
        "no screenshot of {url} at {}",
        path.display()
    );
    path
}

/// The `class` of the box drawn for `tid`, from the rendered DOM.
fn box_classes(dom: &str, tid: u64) -> String {
    let id = format!("id=\"t{tid}\"");
    let at = dom
        .find(&id)
        .unwrap_or_else(|| panic!("no box for task {tid} in the page"));
    let tag = &dom[dom[..at].rfind("<g ").expect("the box is a <g>")..at];
    tag.split("class=\"")
        .nth(1)
        .and_then(|c| c.split('"').next())
        .unwrap_or_default()
        .to_owned()
}

/// The alert rows of the page's table: (kind, tids).
fn alert_rows(dom: &str) -> Vec<(String, Vec<u64>)> {
    dom.split("<tr class=\"alert\" ")
        .skip(1)
        .map(|row| {
            let attr = |name: &str| {
                row.split(&format!("{name}=\""))
                    .nth(1)
                    .and_then(|v| v.split('"').next())
                    .unwrap_or_default()
                    .to_owned()
            };
            let tids = attr("data-tids")
                .split(' ')
                .filter_map(|t| t.parse().ok())
                .collect();
            (attr("data-kind"), tids)
        })
        .collect()
}

#[test]
fn the_live_page_shows_a_real_deadlock_as_a_marked_cycle_and_lists_the_alert() {
    let test = "the_live_page_shows_a_real_deadlock_as_a_marked_cycle_and_lists_the_alert";
    if !require_root(test) {
        return;
    }
    let Some(browser) = chromium(test) else {
        return;
    };
    let state = tempfile::tempdir().expect("tempdir");
    let (mut agent, addr) = Faultline::agent(
        state.path(),
        &["--deadlock-confirm", "300ms", "--snapshot-interval", "50ms"],
    );
    // Two threads that really deadlock (f_pos_lock ↔ userfaultfd) until a rescuer steps in.
    // Four more writers queue on the same lock: identical waiters, drawn as one box.
    let (mut workload, r) = scenario_lingering(&[
        "uffd-deadlock",
        "--hold-ms",
        "20000",
        "--extra-writers",
        "4",
    ]);
    let writers = common::u64s(&r, "writer_tids");
    assert_eq!(writers.len(), 4, "{r}");
    let (holder, handler) = (u64_at(&r, &["holder_tid"]), u64_at(&r, &["handler_tid"]));
    agent.wait_for("deadlock:", Duration::from_secs(5));

    // diagnose draws the same hang from kernel state alone.
    let svg = state.path().join("diagnose.svg");
    let out = Command::new(FAULTLINE)
        .args(["diagnose", "--no-agent", "--svg"])
        .arg(&svg)
        .output()
        .expect("run diagnose");
    assert!(
        out.status.success(),
        "diagnose --svg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let drawn = std::fs::read_to_string(&svg).expect("diagnose wrote the SVG");
    assert!(
        drawn.contains(&format!("id=\"t{holder}\"")),
        "the holder has its box: {drawn}"
    );
    // The kernel does not say the handler serves the userfaultfd (diagnose names the rescuer,
    // the only thread not blocked), so for diagnose the handler is one more waiter of the
    // mutex, grouped with the writers.
    let drawn_tids: Vec<u64> = drawn
        .split("data-tids=\"")
        .skip(1)
        .filter_map(|v| v.split('"').next())
        .flat_map(|v| {
            v.split(' ')
                .filter_map(|t| t.parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect();
    for tid in writers.iter().chain([&handler]) {
        assert!(drawn_tids.contains(tid), "task {tid} is drawn: {drawn}");
    }
    assert!(
        drawn.contains("class=\"edge owner"),
        "the mutex owner arrow: {drawn}"
    );

    let url = format!("http://{addr}/");
    // The page shows the graph of the moment: a snapshot that caught a member between two
    // kernel events can show it unblocked, as a person would see until the next refresh. Look
    // again, a few times, before failing.
    let in_cycle = |dom: &str, tid: u64| {
        dom.contains(&format!("id=\"t{tid}\"")) && box_classes(dom, tid).contains("cycle")
    };
    let mut dom = String::new();
    for _ in 0..4 {
        dom = dump_dom(browser, &url, 2600);
        if in_cycle(&dom, holder) && in_cycle(&dom, handler) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    for tid in [holder, handler] {
        let classes = box_classes(&dom, tid);
        assert!(
            classes.split(' ').any(|c| c == "cycle") && classes.contains("blocked"),
            "task {tid} is drawn blocked and in the cycle: class={classes:?}"
        );
    }
    let (lo, hi) = (holder.min(handler), holder.max(handler));
    assert!(
        dom.contains(&format!("data-cycle=\"{lo} {hi}\"")),
        "the cycle is named above the picture"
    );
    assert!(
        dom.contains("dl-holder") && dom.contains("dl-handler"),
        "comms label the boxes"
    );
    assert!(
        dom.contains("class=\"edge owner cycle\"") && dom.contains("class=\"edge handler cycle\""),
        "both arrows of the cycle are drawn as cycle edges"
    );
    let rows = alert_rows(&dom);
    assert!(
        rows.iter().any(|(kind, tids)| kind == "deadlock"
            && tids.contains(&holder)
            && tids.contains(&handler)),
        "the deadlock is listed among the alerts: {rows:?}"
    );
    assert!(
        dom.contains("data-refreshes=\""),
        "the page refreshed itself from the agent at least once"
    );
    // The four writers are one dashed box; asking to expand it draws them one by one.
    let tids: Vec<String> = writers.iter().map(u64::to_string).collect();
    let group_at = dom
        .find(&format!("data-tids=\"{}\"", tids.join(" ")))
        .unwrap_or_else(|| panic!("no box grouping the writers {tids:?}"));
    let tag = &dom[dom[..group_at].rfind("<g ").expect("a <g>")..group_at];
    assert!(
        tag.contains(" group\""),
        "the writers' box is a group: {tag}"
    );
    assert!(dom.contains("4 waiters"), "the group says how many");
    let id = tag
        .split("data-node=\"")
        .nth(1)
        .and_then(|v| v.split('"').next())
        .expect("the group's id");
    let (status, expanded) = common::http_get(&addr, &format!("/ui/live?expand={id}"));
    assert_eq!(status, 200);
    for w in &writers {
        assert!(
            expanded.contains(&format!("id=\"t{w}\"")),
            "writer {w} has its own box once expanded ({id}): {}",
            expanded
                .split("data-tids=\"")
                .skip(1)
                .filter_map(|v| v.split('"').next())
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    assert!(expanded.contains(&format!("<button class=\"collapse\" data-group=\"{id}\"")));
    let shot = screenshot(browser, &url, "live-deadlock.png", "1300,1000");

    // The incident written for it has its page too, showing the same cycle.
    let incident = std::fs::read_dir(state.path())
        .expect("state dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "html")
                && p.to_string_lossy().ends_with("-deadlock.html")
        })
        .expect("an HTML incident page for the deadlock");
    let incident_url = format!("file://{}", incident.display());
    let page = dump_dom(browser, &incident_url, 100);
    assert!(box_classes(&page, holder).contains("cycle"));
    assert!(page.contains("Waits and holds in progress at detection"));
    let incident_shot = screenshot(browser, &incident_url, "incident-deadlock.png", "1300,1100");

    let svg_shot = screenshot(
        browser,
        &format!("file://{}", svg.display()),
        "diagnose-deadlock.png",
        "1000,800",
    );
    eprintln!(
        "screenshots: {}, {}, {}",
        shot.display(),
        incident_shot.display(),
        svg_shot.display()
    );

    let status = workload.wait().expect("the workload ends once rescued");
    assert!(status.success(), "uffd-deadlock failed");
    let (status, _) = agent.stop();
    assert!(status.success());
}

#[test]
fn the_html_report_of_the_seed_deadlock_shows_the_cycle_the_timeline_and_the_alert() {
    let test = "the_html_report_of_the_seed_deadlock_shows_the_cycle_the_timeline_and_the_alert";
    let Some(browser) = chromium(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (html, svg) = (dir.path().join("seed.html"), dir.path().join("seed.svg"));
    let out = Command::new(FAULTLINE)
        .args(["replay", SEED, "--html"])
        .arg(&html)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("run replay");
    assert!(
        out.status.success(),
        "replay --html: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&html).expect("the report");
    for external in ["href=\"http", "src=", "@import", "url(http", "<link"] {
        assert!(
            !text.contains(external),
            "the report is self-contained: found {external:?}"
        );
    }

    let url = format!("file://{}", html.display());
    let dom = dump_dom(browser, &url, 100);
    for tid in [11, 12, 21, 22] {
        let classes = box_classes(&dom, tid);
        assert!(
            classes.split(' ').any(|c| c == "cycle"),
            "task {tid} is marked as part of the cycle: {classes:?}"
        );
        assert!(
            dom.contains(&format!("<g class=\"row\" data-tid=\"{tid}\"")),
            "task {tid} has a timeline row"
        );
    }
    assert!(dom.contains("data-cycle=\"11 12 21 22\""));
    assert_eq!(
        alert_rows(&dom),
        vec![("deadlock".to_owned(), vec![12, 11, 22, 21])],
        "the one alert of the seed trace is listed"
    );
    assert!(
        dom.contains("read-write-read inversion"),
        "with its explanation"
    );
    assert!(
        dom.contains("class=\"edge queued cycle\""),
        "queued-behind-writer arrows are distinct"
    );
    let shot = screenshot(browser, &url, "seed-report.png", "1300,1500");

    let svg_url = format!("file://{}", svg.display());
    let picture = dump_dom(browser, &svg_url, 100);
    assert_eq!(picture.matches(" cycle\" id=\"t").count(), 4, "{picture}");
    let svg_shot = screenshot(browser, &svg_url, "seed-graph.png", "700,700");
    eprintln!("screenshots: {}, {}", shot.display(), svg_shot.display());
}

#[test]
fn hundreds_of_readers_behind_one_writer_read_as_one_box_with_a_list_to_expand() {
    let test = "hundreds_of_readers_behind_one_writer_read_as_one_box_with_a_list_to_expand";
    let Some(browser) = chromium(test) else {
        return;
    };
    // A convoy: one long reader, a writer queued behind it, 300 readers behind the writer.
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("convoy.jsonl");
    let mm = "0xffff888100001000";
    let mut lines = vec![
        format!(
            r#"{{"ts_ns":1000000000,"tid":100,"pid":100,"comm":"checkpoint","kind":"mmap_lock_acquire","mm":"{mm}","write":false,"success":true}}"#
        ),
        format!(
            r#"{{"ts_ns":1010000000,"tid":101,"pid":100,"comm":"mapper","kind":"mmap_lock_start","mm":"{mm}","write":true}}"#
        ),
    ];
    for i in 0..300u64 {
        lines.push(format!(
            r#"{{"ts_ns":{},"tid":{},"pid":100,"comm":"{}","kind":"mmap_lock_start","mm":"{mm}","write":false}}"#,
            1_020_000_000 + i * 100_000,
            1000 + i,
            if i % 4 == 0 { "ps" } else { "worker" }
        ));
    }
    lines.push(r#"{"ts_ns":3000000000,"tid":9,"pid":9,"comm":"clock","kind":"page_fault","addr":"0x1000","user":true,"error_code":6}"#.into());
    std::fs::write(&trace, lines.join("\n")).expect("write the trace");
    let html = dir.path().join("convoy.html");
    let out = Command::new(FAULTLINE)
        .args(["replay", "--html"])
        .arg(&html)
        .arg(&trace)
        .output()
        .expect("run replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let url = format!("file://{}", html.display());
    let dom = dump_dom(browser, &url, 100);
    // The first moment's picture: three boxes, the 300 readers being one of them.
    let first = dom
        .split("<section class=\"alert-picture\"")
        .nth(1)
        .expect("a picture of the first alerts");
    assert_eq!(first.matches("<g class=\"node").count(), 3, "{first}");
    assert!(first.contains("300 readers"), "the group says how many");
    assert!(first.contains("queued behind writer 101 (mapper)"));
    assert!(first.contains("worker ×225, ps ×75"));
    assert!(
        first.contains("×300 mmap_lock of pid 100"),
        "its arrow counts them"
    );
    let list = first
        .split("<details class=\"members\" data-group=")
        .nth(1)
        .expect("the group's list of tasks");
    assert_eq!(list.matches("<tr><td class=\"num\">").count(), 300);
    let shot = screenshot(browser, &url, "convoy-report.png", "1300,1300");
    eprintln!("screenshot: {}", shot.display());
}

/// The opening tag of the flame graph view of `view` (`*` for all locks) in a rendered DOM.
fn flame_view_tag<'a>(dom: &'a str, view: &str) -> &'a str {
    let attr = format!("data-lock-view=\"{view}\"");
    let at = dom
        .find(&attr)
        .unwrap_or_else(|| panic!("no flame graph view {view:?} in the page"));
    let start = dom[..at].rfind("<svg").expect("the view is an <svg>");
    let end = at + dom[at..].find('>').expect("the tag ends");
    &dom[start..end]
}

#[test]
fn the_flame_graph_shows_a_real_locks_waits_live_and_in_the_replay_report_and_filters_by_lock() {
    let test =
        "the_flame_graph_shows_a_real_locks_waits_live_and_in_the_replay_report_and_filters_by_lock";
    if !require_root(test) {
        return;
    }
    let Some(browser) = chromium(test) else {
        return;
    };
    let state = tempfile::tempdir().expect("tempdir");
    let (agent, addr) = Faultline::agent(state.path(), &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("trace.jsonl");
    let rec = Faultline::start(
        &["record", "-o", trace.to_str().expect("utf-8 path")],
        "recording to",
    );
    // A read-write-read convoy on the scenario's own mmap_lock: a lock no other process takes.
    let child = Command::new(&*common::SCENARIO)
        .args(["rwr", "--hold-mib", "256"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("rwr");
    let pid = child.id();
    let out = child.wait_with_output().expect("rwr ends");
    assert!(out.status.success(), "rwr failed");
    let (status, lines) = rec.stop();
    assert!(status.success(), "record: {}", lines.join("\n"));
    let ours = format!("mmap_lock of {pid}");

    // Live: the agent's page draws its profile since it started.
    let live = dump_dom(browser, &format!("http://{addr}/"), 500);
    agent.stop();
    assert!(
        live.contains("class=\"flame\""),
        "a flame graph on the live page"
    );
    assert!(
        live.contains(&format!("<g class=\"frame\" data-lock=\"{ours}")),
        "the live flame graph has a tower for {ours}"
    );
    assert!(!live.contains("0xffff"), "no kernel address on the page");

    // The replay report of the recording draws the recording's profile.
    let html = dir.path().join("report.html");
    let out = Command::new(FAULTLINE)
        .arg("replay")
        .arg(&trace)
        .arg("--html")
        .arg(&html)
        .output()
        .expect("run replay");
    assert!(
        out.status.success(),
        "replay --html: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = format!("file://{}", html.display());
    let dom = dump_dom(browser, &url, 100);
    let label = dom
        .split("<option value=\"")
        .skip(1)
        .filter_map(|o| o.split('"').next())
        .find(|v| v.starts_with(&ours))
        .unwrap_or_else(|| panic!("{ours} is offered in the lock filter"))
        .to_owned();
    let tower = format!("<g class=\"frame\" data-lock=\"{label}\"><title>lock:{label}");
    assert!(dom.contains(&tower), "the lock's root frame: {tower}");
    assert!(
        !flame_view_tag(&dom, "*").contains("display: none"),
        "all locks are shown first"
    );

    // Chosen through the URL (the select writes the same hash): only that lock is shown.
    let encoded: String = label
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let filtered = dump_dom(browser, &format!("{url}#flame-lock={encoded}"), 100);
    assert!(
        flame_view_tag(&filtered, "*").contains("display: none"),
        "the all-locks view is hidden once a lock is chosen"
    );
    assert!(
        !flame_view_tag(&filtered, &label).contains("display: none"),
        "the chosen lock's view is shown"
    );
    let shot = screenshot(
        browser,
        &format!("{url}#flame-lock={encoded}"),
        "flame-report.png",
        "1300,1800",
    );
    eprintln!("screenshot: {}", shot.display());
}
