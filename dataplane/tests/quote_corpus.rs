//! Runs quote stripping over the corpus of real-shaped replies in `tests/data/replies/`
//! (format: `tests/data/replies/README.md`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use helpr_dataplane::ingest::quote::{Stripped, strip_html_quotes, strip_text_quotes};

struct Case {
    name: String,
    html: bool,
    client: String,
    quote: bool,
    keep: Vec<String>,
    drop: Vec<String>,
    markers: Vec<String>,
    body: String,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/replies")
}

fn load() -> Vec<Case> {
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext != "txt" && ext != "html" {
            continue;
        }
        let raw = std::fs::read_to_string(&path).unwrap();
        let (header, body) = raw
            .split_once("\n---\n")
            .unwrap_or_else(|| panic!("{}: no --- line", path.display()));
        let mut case = Case {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            html: ext == "html",
            client: String::new(),
            quote: false,
            keep: Vec::new(),
            drop: Vec::new(),
            markers: Vec::new(),
            body: body.to_owned(),
        };
        for line in header.lines() {
            let (key, value) = line
                .strip_prefix("# ")
                .and_then(|l| l.split_once(": "))
                .unwrap_or_else(|| panic!("{}: bad header line {line:?}", case.name));
            let value = value.to_owned();
            match key {
                "client" => case.client = value,
                "quote" => case.quote = value == "yes",
                "keep" => case.keep.push(value),
                "drop" => case.drop.push(value),
                "marker" => case.markers.push(value),
                other => panic!("{}: unknown header {other}", case.name),
            }
        }
        cases.push(case);
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

/// Text content of HTML, for assertions only (the product parses HTML with html5ever).
fn visible_text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    out.split(|c: char| c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(case: &Case) -> Stripped {
    if case.html {
        strip_html_quotes(&case.body)
    } else {
        strip_text_quotes(&case.body)
    }
}

fn check(case: &Case) -> Vec<String> {
    let mut failures = Vec::new();
    let s = run(case);
    let mut fail = |m: String| failures.push(format!("{} ({}): {m}", case.name, case.client));
    if s.quote_found != case.quote {
        fail(format!(
            "quote_found = {}, expected {}",
            s.quote_found, case.quote
        ));
    }
    if !case.quote {
        if s.kept != case.body {
            fail("nothing must be removed, but the body changed".into());
        }
        if s.stripped_bytes != 0 {
            fail(format!("stripped_bytes = {}, expected 0", s.stripped_bytes));
        }
    } else if s.stripped_bytes == 0 {
        fail("a quote was removed but stripped_bytes is 0".into());
    }
    if !case.html && s.stripped_bytes != case.body.len() - s.kept.len() {
        fail("stripped_bytes is not input minus output".into());
    }
    let haystack = if case.html {
        visible_text(&s.kept)
    } else {
        s.kept.clone()
    };
    for k in &case.keep {
        let k = if case.html {
            visible_text(k)
        } else {
            k.clone()
        };
        if !haystack.contains(&k) {
            fail(format!("must keep {k:?}"));
        }
    }
    for d in &case.drop {
        let in_raw = s.kept.contains(d.as_str());
        let d_text = if case.html {
            visible_text(d)
        } else {
            d.clone()
        };
        if haystack.contains(&d_text) || in_raw {
            fail(format!("must drop {d:?}"));
        }
    }
    let found: Vec<&str> = s.markers.iter().map(|m| m.as_str()).collect();
    for m in &case.markers {
        if !found.contains(&m.as_str()) {
            fail(format!("marker {m} not reported (got {found:?})"));
        }
    }
    failures
}

#[test]
fn corpus_has_at_least_forty_replies_from_different_clients() {
    let cases = load();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let html = cases.iter().filter(|c| c.html).count();
    assert!(html >= 15 && cases.len() - html >= 15);
    for family in [
        "Gmail",
        "Outlook",
        "Apple Mail",
        "Thunderbird",
        "Yahoo",
        "mutt",
    ] {
        assert!(
            cases.iter().filter(|c| c.client.contains(family)).count() >= 2,
            "too few {family} cases"
        );
    }
}

#[test]
fn every_corpus_reply_keeps_the_new_text_and_drops_the_quote() {
    let failures: Vec<String> = load().iter().flat_map(check).collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn bodies_without_a_quote_come_back_byte_for_byte() {
    for case in load().iter().filter(|c| !c.quote) {
        let s = run(case);
        assert_eq!(s.kept, case.body, "{}", case.name);
        assert!(!s.quote_found, "{}", case.name);
    }
}

#[test]
fn stripping_twice_removes_nothing_more() {
    for case in load().iter().filter(|c| c.quote) {
        let once = run(case);
        let twice = if case.html {
            strip_html_quotes(&once.kept)
        } else {
            strip_text_quotes(&once.kept)
        };
        assert!(
            !twice.quote_found,
            "{}: second pass removed more",
            case.name
        );
    }
}

#[test]
fn truncated_and_mangled_corpus_bodies_never_panic() {
    for case in load() {
        let b = case.body.as_str();
        let mut cuts: Vec<usize> = (0..b.len())
            .step_by(97)
            .filter(|i| b.is_char_boundary(*i))
            .collect();
        cuts.push(b.len());
        for i in cuts {
            let part = &b[..i];
            let _ = strip_text_quotes(part);
            let _ = strip_html_quotes(part);
        }
        let _ = strip_text_quotes(&case.body.replace('\n', "\r"));
        let _ = strip_html_quotes(&case.body.replace('>', ""));
        let _ = strip_html_quotes(&case.body.repeat(20));
    }
}
