//! Proves the HTML sanitizer in a real browser.
//!
//! Every payload of `tests/data/xss/` (our own XSS and tracking corpus, see its README) is
//! sanitized with `sanitize_html` and rendered by headless Chromium, each in its own
//! document (one iframe per payload, many per page). The sanitized HTML is rendered twice
//! per document: parsed as part of the page, and inserted with `innerHTML`. Everything the
//! browser could do with it is recorded:
//!
//! - requests: a local server serves the pages and counts every request; each payload
//!   points its beacons at `/beacon/<payload id>`, so any execution or load shows up there;
//!   any other request (a relative URL, a second load of a page) is unexpected;
//! - dialogs and popups: an instrumentation script in each document's `<head>` (outside the
//!   sanitized content) replaces `alert`, `confirm`, `prompt`, `print` and `open`;
//! - navigation: the outer page checks that every frame still holds its own document;
//! - what survived: the outer page audits each frame's DOM, as the browser parsed it, for
//!   handlers, scripts, embedded documents, foreign content, dangerous URL schemes, loadable
//!   image URLs and CSS that can load or execute.
//!
//! The test fails on any of them. A positive control renders the same corpus unsanitized
//! (in sandboxed frames) through the same harness and requires the instrumentation to
//! catch it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use helpr_dataplane::ingest::sanitize::sanitize_html;
use helpr_tests::chromium;
use serde_json::Value;

/// Payloads per page (each in its own iframe).
const BATCH: usize = 60;
/// Chromium processes at once.
const PARALLEL: usize = 2;
/// Page time after the outer page's load event before the audit runs.
const SETTLE_MS: u64 = 1500;
/// Page time after which the audit runs even if some frame never finished loading.
const DEADLINE_MS: u64 = 8000;

#[derive(Debug, Clone)]
struct Payload {
    class: String,
    file: String,
    line: usize,
    /// Position in its file, counting payload lines only (1-based).
    n: usize,
    template: String,
}

impl Payload {
    fn id(&self) -> String {
        format!("{}-{}", self.class, self.n)
    }

    fn location(&self) -> String {
        format!("tests/data/xss/{}:{}", self.file, self.line)
    }

    /// The payload with its placeholders filled in for a beacon at `origin`.
    fn render(&self, origin: &str) -> String {
        let beacon = format!("{origin}/beacon/{}", self.id());
        let beacon_rel = beacon.trim_start_matches("http:").to_owned();
        let beacon_ent: String = beacon.chars().map(|c| format!("&#{};", c as u32)).collect();
        let js = format!("fetch('{beacon}')");
        let svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" onload="{js}"><script>{js}</script></svg>"#
        );
        self.template
            .replace("{{JS}}", &js)
            .replace("{{JSB}}", &format!("fetch(`{beacon}`)"))
            .replace("{{B64JS}}", &BASE64.encode(&js))
            .replace(
                "{{B64HTML}}",
                &BASE64.encode(format!("<script>{js}</script>")),
            )
            .replace("{{B64SVG}}", &BASE64.encode(svg))
            .replace("{{BEACON_REL}}", &beacon_rel)
            .replace("{{BEACON_ENT}}", &beacon_ent)
            .replace("{{BEACON}}", &beacon)
            .replace("{{NL}}", "\n")
            .replace("{{CR}}", "\r")
            .replace("{{TAB}}", "\t")
            .replace("{{FF}}", "\u{c}")
            .replace("{{NUL}}", "\0")
    }
}

const BEACON_PLACEHOLDERS: &[&str] = &[
    "{{BEACON}}",
    "{{BEACON_REL}}",
    "{{BEACON_ENT}}",
    "{{JS}}",
    "{{JSB}}",
    "{{B64JS}}",
    "{{B64HTML}}",
    "{{B64SVG}}",
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/xss")
}

/// `HELPR_XSS_ONLY=css,handlers-3` restricts the browser runs to payloads whose id starts
/// with one of the prefixes (for investigating one payload).
fn selected(payloads: Vec<Payload>) -> Vec<Payload> {
    match std::env::var("HELPR_XSS_ONLY") {
        Ok(only) if !only.is_empty() => payloads
            .into_iter()
            .filter(|p| {
                let id = p.id();
                only.split(',')
                    .any(|prefix| id == prefix || id.starts_with(&format!("{prefix}-")))
            })
            .collect(),
        _ => payloads,
    }
}

fn corpus() -> Vec<Payload> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("read tests/data/xss")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "txt"))
        .collect();
    files.sort();
    let mut payloads = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let class = file.trim_end_matches(".txt").to_owned();
        let text = std::fs::read_to_string(&path).expect("read corpus file");
        let mut n = 0;
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            n += 1;
            payloads.push(Payload {
                class: class.clone(),
                file: file.clone(),
                line: index + 1,
                n,
                template: line.to_owned(),
            });
        }
    }
    payloads
}

// ---------------------------------------------------------------------------------------
// The instrumentation server

#[derive(Debug, Clone)]
struct Hit {
    method: Method,
    path: String,
}

#[derive(Default)]
struct ServerState {
    pages: Mutex<HashMap<String, String>>,
    hits: Mutex<Vec<Hit>>,
}

struct Server {
    origin: String,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> Self {
        let state = Arc::new(ServerState::default());
        let app = Router::new().fallback(serve).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            origin,
            state,
            task,
        }
    }

    fn add_page(&self, path: String, html: String) {
        self.state.pages.lock().unwrap().insert(path, html);
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(State(state): State<Arc<ServerState>>, method: Method, uri: Uri) -> Response {
    let path = uri.path().to_owned();
    state.hits.lock().unwrap().push(Hit {
        method,
        path: path.clone(),
    });
    match state.pages.lock().unwrap().get(&path) {
        Some(page) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            page.clone(),
        )
            .into_response(),
        // A valid image, so that an `onerror` handler that reloads its own image does not
        // loop forever (which would also stall Chromium's virtual time).
        None if path.starts_with("/beacon/") => (
            [
                (header::CONTENT_TYPE, "image/gif"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            PIXEL_GIF,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A transparent 1x1 GIF.
const PIXEL_GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

// ---------------------------------------------------------------------------------------
// Pages

/// A JSON string literal that is safe inside a `<script>` element.
fn js_string(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
}

/// The document of one payload: instrumentation in `<head>`, the HTML under test in
/// `<body>`, and the same HTML inserted again through `innerHTML` once the document is
/// parsed.
fn frame_page(id: &str, html: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html><head><meta charset="utf-8" data-helpr-harness="1"><script data-helpr-harness="1">
(function () {{
  var id = {id};
  var events = [];
  Object.defineProperty(window, '__helpr', {{ value: {{ id: id, events: events }} }});
  function record(kind) {{
    events.push(kind);
    try {{ navigator.sendBeacon('/report/' + kind + '/' + encodeURIComponent(id)); }} catch (e) {{}}
  }}
  ['alert', 'confirm', 'prompt', 'print'].forEach(function (name) {{
    window[name] = function () {{ record(name); return null; }};
  }});
  window.open = function () {{ record('open'); return null; }};
  var html = {html_js};
  document.addEventListener('DOMContentLoaded', function () {{
    var holder = document.createElement('div');
    holder.setAttribute('data-helpr-inner', '1');
    holder.innerHTML = html;
    document.body.appendChild(holder);
  }});
}})();
</script></head><body>
{html}
</body></html>"#,
        id = js_string(id),
        html_js = js_string(html),
    )
}

/// Audits a frame's DOM as the browser parsed it; returns what should not be there.
const AUDIT_JS: &str = r#"
var XHTML = 'http://www.w3.org/1999/xhtml';
var BAD = ' script iframe frame frameset object embed applet form input button textarea select option optgroup datalist keygen isindex style link meta base svg math video audio source track picture template noscript portal fencedframe canvas map area marquee bgsound dialog xmp plaintext listing noembed noframes param slot image ';
var URLS = ' href src srcset action formaction xlink:href background poster data cite longdesc lowsrc dynsrc ping codebase manifest icon profile usemap code archive classid srcdoc ';
function audit(doc) {
  var v = [];
  if (doc.styleSheets.length > 0) v.push('stylesheets: ' + doc.styleSheets.length);
  var els = doc.getElementsByTagName('*');
  for (var i = 0; i < els.length; i++) {
    var el = els[i];
    if (el.hasAttribute('data-helpr-harness')) continue;
    var tag = String(el.localName || '').toLowerCase();
    if (tag !== 'html' && tag !== 'head' && tag !== 'body') {
      if (el.namespaceURI !== XHTML) v.push('foreign element <' + tag + '>');
      else if (BAD.indexOf(' ' + tag + ' ') >= 0) v.push('element <' + tag + '>');
    }
    if (el.shadowRoot) v.push('shadow root on <' + tag + '>');
    for (var j = 0; j < el.attributes.length; j++) {
      var a = el.attributes[j];
      var n = a.name.toLowerCase();
      var s = a.value.replace(/[\u0000-\u0020\u007f-\u009f]/g, '').toLowerCase();
      if (n.indexOf('on') === 0) v.push('handler <' + tag + ' ' + n + '>');
      if (URLS.indexOf(' ' + n + ' ') >= 0 || /:href$/.test(n)) {
        if (/^(javascript|vbscript|livescript|data|blob|filesystem|file|about|jar|view-source|feed|wyciwyg):/.test(s)) {
          v.push('unsafe url <' + tag + ' ' + n + '>');
        } else if (n !== 'href' && n !== 'cite' && s !== '' && s.indexOf('cid:') !== 0) {
          v.push('loadable url <' + tag + ' ' + n + '>');
        } else if (n === 'href' && tag !== 'a') {
          v.push('href on <' + tag + '>');
        }
      }
      if (n === 'style') {
        var css = s.replace(/\/\*[\s\S]*?\*\//g, '');
        if (/url\(|image-set|expression|behavior|binding|@import|\\|src\(|var\(|attr\(|position:(fixed|absolute)/.test(css)) {
          v.push('style <' + tag + '>');
        }
      }
    }
    if (tag === 'a' && el.hasAttribute('href')) {
      var rel = ' ' + String(el.getAttribute('rel') || '').toLowerCase() + ' ';
      if (rel.indexOf(' noopener ') < 0 || rel.indexOf(' noreferrer ') < 0 || rel.indexOf(' nofollow ') < 0) {
        v.push('link without rel noopener noreferrer nofollow');
      }
      if (el.getAttribute('target') !== '_blank') v.push('link without target _blank');
    }
  }
  return v;
}
"#;

/// The outer page of one batch: one iframe per payload, then the audit, whose result is
/// written (base64 JSON) into `#helpr-result` for `--dump-dom` to return.
fn batch_page(frames: &[(String, String)], sandbox: bool) -> String {
    let mut iframes = String::new();
    for (id, path) in frames {
        let sandbox = if sandbox {
            r#" sandbox="allow-scripts allow-same-origin""#
        } else {
            ""
        };
        writeln!(
            iframes,
            r#"<iframe data-payload="{id}" data-expect="{path}" src="{path}" width="240" height="140"{sandbox}></iframe>"#
        )
        .unwrap();
    }
    format!(
        r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"></head><body>
<pre id="helpr-result"></pre>
{iframes}
<script>
(function () {{
{AUDIT_JS}
  var done = false;
  function check() {{
    if (done) return;
    done = true;
    var out = [];
    var frames = document.querySelectorAll('iframe[data-payload]');
    for (var i = 0; i < frames.length; i++) {{
      var f = frames[i];
      var r = {{ id: f.getAttribute('data-payload'), problems: [], events: [], violations: [] }};
      try {{
        var w = f.contentWindow;
        var h = w && w.__helpr;
        if (!h || h.id !== r.id) {{
          r.problems.push('instrumentation missing: the frame navigated or did not load');
        }} else {{
          if (w.location.pathname !== f.getAttribute('data-expect')) {{
            r.problems.push('frame navigated to ' + w.location.href);
          }}
          r.events = h.events.slice();
          r.violations = audit(f.contentDocument);
        }}
      }} catch (e) {{
        r.problems.push('frame not accessible (navigated cross-origin?): ' + e);
      }}
      out.push(r);
    }}
    var json = JSON.stringify(out);
    document.getElementById('helpr-result').textContent = btoa(unescape(encodeURIComponent(json)));
  }}
  window.addEventListener('load', function () {{ setTimeout(check, {SETTLE_MS}); }});
  setTimeout(check, {DEADLINE_MS});
}})();
</script>
</body></html>"#
    )
}

// ---------------------------------------------------------------------------------------
// Running a corpus

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Sanitized HTML in unsandboxed frames: the sanitizer alone must make it inert.
    Sanitized,
    /// Unsanitized HTML in sandboxed frames (no top navigation): the positive control.
    Raw,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sanitized => "sanitized",
            Mode::Raw => "raw",
        }
    }
}

/// What the harness saw for one payload.
#[derive(Debug, Default, Clone)]
struct Findings {
    beacons: usize,
    reports: Vec<String>,
    events: Vec<String>,
    violations: Vec<String>,
    problems: Vec<String>,
    /// The batch page of this payload produced no audit result.
    harness_errors: Vec<String>,
}

impl Findings {
    fn is_clean(&self) -> bool {
        self.beacons == 0
            && self.reports.is_empty()
            && self.events.is_empty()
            && self.violations.is_empty()
            && self.problems.is_empty()
            && self.harness_errors.is_empty()
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.beacons > 0 {
            parts.push(format!("{} beacon request(s)", self.beacons));
        }
        if !self.reports.is_empty() {
            parts.push(format!("reports {:?}", self.reports));
        }
        if !self.events.is_empty() {
            parts.push(format!("events {:?}", self.events));
        }
        if !self.violations.is_empty() {
            parts.push(format!("dom {:?}", self.violations));
        }
        if !self.problems.is_empty() {
            parts.push(format!("{:?}", self.problems));
        }
        if !self.harness_errors.is_empty() {
            parts.push(format!("harness {:?}", self.harness_errors));
        }
        parts.join("; ")
    }
}

struct Run {
    findings: BTreeMap<String, Findings>,
    /// Requests that are neither a page of this run, a beacon nor a report.
    unexpected: Vec<String>,
    /// Pages requested other than exactly once.
    page_counts: Vec<String>,
    /// What each payload became (the sanitized HTML, or the raw payload).
    rendered: HashMap<String, String>,
}

async fn run_corpus(payloads: &[Payload], mode: Mode) -> Run {
    let chromium = chromium::binary().unwrap_or_else(|e| panic!("{e:#}"));
    let server = Server::start().await;
    let mut rendered = HashMap::new();
    let mut page_paths = Vec::new();
    let mut batches = Vec::new();
    for (b, chunk) in payloads.chunks(BATCH).enumerate() {
        let mut frames = Vec::new();
        for (i, payload) in chunk.iter().enumerate() {
            let id = payload.id();
            let raw = payload.render(&server.origin);
            let html = match mode {
                Mode::Sanitized => sanitize_html(&raw).html,
                Mode::Raw => raw,
            };
            let path = format!("/{}/p/{b}/{i}", mode.name());
            server.add_page(path.clone(), frame_page(&id, &html));
            rendered.insert(id.clone(), html);
            page_paths.push(path.clone());
            frames.push((id, path));
        }
        let path = format!("/{}/b/{b}", mode.name());
        server.add_page(path.clone(), batch_page(&frames, mode == Mode::Raw));
        page_paths.push(path.clone());
        batches.push((path, frames));
    }

    let mut findings: BTreeMap<String, Findings> = payloads
        .iter()
        .map(|p| (p.id(), Findings::default()))
        .collect();
    let mut pending = batches.into_iter();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < PARALLEL {
            let Some((path, frames)) = pending.next() else {
                break;
            };
            let url = format!("{}{path}", server.origin);
            let chromium = chromium.clone();
            running.spawn(async move {
                let started = std::time::Instant::now();
                let dom = chromium::dump_dom(
                    &chromium,
                    &url,
                    Duration::from_millis(DEADLINE_MS + 2000),
                    Duration::from_secs(60),
                )
                .await;
                eprintln!("{url}: chromium took {:?}", started.elapsed());
                (frames, dom)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (frames, dom) = joined.unwrap();
        let results = dom
            .map_err(|e| format!("{e:#}"))
            .and_then(|dom| parse_results(&dom));
        match results {
            Ok(results) => {
                let mut seen = HashSet::new();
                for result in results {
                    let id = result["id"].as_str().unwrap_or_default().to_owned();
                    let entry = findings.entry(id.clone()).or_default();
                    entry.events.extend(strings(&result["events"]));
                    entry.violations.extend(strings(&result["violations"]));
                    entry.problems.extend(strings(&result["problems"]));
                    seen.insert(id);
                }
                for (id, _) in &frames {
                    if !seen.contains(id) {
                        findings
                            .entry(id.clone())
                            .or_default()
                            .harness_errors
                            .push("no audit result for this frame".to_owned());
                    }
                }
            }
            Err(error) => {
                for (id, _) in &frames {
                    findings.entry(id.clone()).or_default().harness_errors.push(format!(
                        "batch page produced no audit result (top-level navigation or harness failure): {error}"
                    ));
                }
            }
        }
    }
    // Let stragglers (sendBeacon after the audit) arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pages: HashSet<&String> = page_paths.iter().collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut unexpected = Vec::new();
    for hit in server.hits() {
        if let Some(rest) = hit.path.strip_prefix("/beacon/") {
            let id = rest.split('/').next().unwrap_or_default().to_owned();
            findings.entry(id).or_default().beacons += 1;
        } else if let Some(rest) = hit.path.strip_prefix("/report/") {
            let mut parts = rest.splitn(2, '/');
            let kind = parts.next().unwrap_or_default().to_owned();
            let id = parts.next().unwrap_or_default().to_owned();
            findings.entry(id).or_default().reports.push(kind);
        } else if pages.contains(&hit.path) {
            *counts.entry(hit.path.clone()).or_default() += 1;
        } else if hit.path != "/favicon.ico" {
            unexpected.push(format!("{} {}", hit.method, hit.path));
        }
    }
    let page_counts = page_paths
        .iter()
        .filter_map(|path| {
            let n = counts.get(path).copied().unwrap_or(0);
            (n != 1).then(|| format!("{path} requested {n} times"))
        })
        .collect();
    Run {
        findings,
        unexpected,
        page_counts,
        rendered,
    }
}

fn parse_results(dom: &str) -> Result<Vec<Value>, String> {
    let start_tag = "<pre id=\"helpr-result\">";
    let start = dom
        .find(start_tag)
        .ok_or_else(|| "result element missing from the dumped DOM".to_owned())?
        + start_tag.len();
    let end = dom[start..]
        .find("</pre>")
        .ok_or_else(|| "result element not closed".to_owned())?;
    let encoded = dom[start..start + end].trim();
    if encoded.is_empty() {
        return Err("the audit did not run within the virtual time budget".to_owned());
    }
    let json = BASE64
        .decode(encoded)
        .map_err(|e| format!("result is not base64: {e}"))?;
    let value: Value =
        serde_json::from_slice(&json).map_err(|e| format!("result is not json: {e}"))?;
    value
        .as_array()
        .cloned()
        .ok_or_else(|| "result is not a list".to_owned())
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map_or_else(|| item.to_string(), str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn per_class(payloads: &[Payload]) -> BTreeMap<String, usize> {
    let mut classes = BTreeMap::new();
    for payload in payloads {
        *classes.entry(payload.class.clone()).or_default() += 1;
    }
    classes
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn corpus_has_at_least_300_payloads_each_with_a_beacon() {
    let payloads = corpus();
    let classes = per_class(&payloads);
    eprintln!("corpus: {} payloads {classes:?}", payloads.len());
    assert!(
        payloads.len() >= 300,
        "only {} payloads in tests/data/xss",
        payloads.len()
    );
    for class in [
        "script",
        "handlers",
        "url-schemes",
        "css",
        "svg-mathml",
        "mutation",
        "embeds",
        "tracking",
        "malformed",
    ] {
        assert!(
            classes.get(class).copied().unwrap_or(0) >= 20,
            "class {class} has fewer than 20 payloads"
        );
    }
    let mut seen = HashSet::new();
    for payload in &payloads {
        assert!(
            BEACON_PLACEHOLDERS
                .iter()
                .any(|p| payload.template.contains(p)),
            "{} does not reference the beacon",
            payload.location()
        );
        assert!(
            seen.insert(payload.template.clone()),
            "{} duplicates an earlier payload",
            payload.location()
        );
        let rendered = payload.render("http://127.0.0.1:1");
        assert!(
            !rendered.contains("{{"),
            "{} has an unknown placeholder",
            payload.location()
        );
    }
}

/// Sanitizing sanitized HTML changes nothing but the data attributes (which the sanitizer
/// only writes and never accepts): the output is stable under re-parsing, the root cause of
/// mutation XSS.
#[test]
fn sanitized_corpus_is_stable_when_sanitized_again() {
    fn without_data_attributes(html: &str) -> String {
        let mut out = String::with_capacity(html.len());
        let mut rest = html;
        while let Some(start) = rest.find(" data-helpr-remote-") {
            out.push_str(&rest[..start]);
            let after = &rest[start..];
            let value_start = after.find("=\"").unwrap() + 2;
            let value_end = after[value_start..].find('"').unwrap();
            rest = &after[value_start + value_end + 1..];
        }
        out.push_str(rest);
        out.replace(" style=\"\"", "")
    }
    let mut unstable = Vec::new();
    for payload in corpus() {
        let once = sanitize_html(&payload.render("http://127.0.0.1:1")).html;
        let twice = sanitize_html(&once).html;
        if twice != without_data_attributes(&once) {
            unstable.push(format!(
                "{}:\n  once:  {once}\n  twice: {twice}",
                payload.location()
            ));
        }
    }
    assert!(
        unstable.is_empty(),
        "{} payloads change when sanitized twice:\n{}",
        unstable.len(),
        unstable.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sanitized_payloads_neither_execute_nor_load_anything_in_chromium() {
    let all = corpus();
    assert!(all.len() >= 300);
    let payloads = selected(all);
    let started = std::time::Instant::now();
    let run = run_corpus(&payloads, Mode::Sanitized).await;
    let by_id: HashMap<String, &Payload> = payloads.iter().map(|p| (p.id(), p)).collect();

    let mut report = String::new();
    for (id, findings) in &run.findings {
        if findings.is_clean() {
            continue;
        }
        let (location, template) = by_id
            .get(id)
            .map(|p| (p.location(), p.template.as_str()))
            .unwrap_or_else(|| (format!("unknown payload {id}"), ""));
        writeln!(
            report,
            "{id} ({location}): {}\n  payload:   {template}\n  sanitized: {}",
            findings.describe(),
            run.rendered.get(id).map_or("", String::as_str)
        )
        .unwrap();
    }
    for request in &run.unexpected {
        writeln!(report, "unexpected request: {request}").unwrap();
    }
    for count in &run.page_counts {
        writeln!(report, "page loaded other than once (navigation?): {count}").unwrap();
    }
    eprintln!(
        "sanitized corpus: {} payloads {:?} rendered in {:?}",
        payloads.len(),
        per_class(&payloads),
        started.elapsed()
    );
    assert!(
        report.is_empty(),
        "sanitized payloads were not inert in chromium:\n{report}"
    );
}

/// Positive control: the same corpus, unsanitized, through the same harness. Proves that
/// each detector (beacon requests, dialogs, navigation, DOM audit) fires, and that the
/// corpus is live: nearly every payload is caught when not sanitized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsanitized_payloads_are_caught_by_the_instrumentation() {
    let all = corpus();
    let complete = all.len();
    let payloads = selected(all);
    let mut run = run_corpus(&payloads, Mode::Raw).await;
    // The meta refresh navigates the frame away while the harness reads its findings; on a
    // loaded machine the navigation report can lose that race, so that control gets up to
    // three more runs of its own (a fresh page each) before `controls_fire` judges it.
    if let Some(refresh) = payloads.iter().find(|p| p.template == REFRESH_CONTROL) {
        for _ in 0..3 {
            if run
                .findings
                .get(&refresh.id())
                .is_some_and(refresh_detected)
            {
                break;
            }
            let again = run_corpus(std::slice::from_ref(refresh), Mode::Raw).await;
            if let Some(f) = again.findings.get(&refresh.id()) {
                run.findings.insert(refresh.id(), f.clone());
            }
        }
    }
    let harness_errors: Vec<String> = run
        .findings
        .iter()
        .filter(|(_, f)| !f.harness_errors.is_empty())
        .map(|(id, f)| format!("{id}: {:?}", f.harness_errors))
        .collect();
    assert!(
        harness_errors.is_empty(),
        "the harness failed on raw payloads:\n{}",
        harness_errors.join("\n")
    );
    if payloads.len() == complete {
        controls_fire(&payloads, &run);
    }

    // The corpus is live: report and bound how much of each class is caught raw.
    let mut caught_total = 0;
    let mut executed_total = 0;
    let mut lines = Vec::new();
    let mut missed = Vec::new();
    for (class, total) in per_class(&payloads) {
        let mut caught = 0;
        let mut executed = 0;
        for payload in payloads.iter().filter(|p| p.class == class) {
            let seen = &run.findings[&payload.id()];
            if !seen.is_clean() {
                caught += 1;
            } else {
                missed.push(format!("{} {}", payload.location(), payload.template));
            }
            if seen.beacons > 0 || !seen.events.is_empty() {
                executed += 1;
            }
        }
        caught_total += caught;
        executed_total += executed;
        lines.push(format!(
            "{class}: {caught}/{total} caught raw, {executed} executed or loaded"
        ));
    }
    eprintln!(
        "raw corpus ({} payloads): {caught_total} caught, {executed_total} executed or loaded\n{}\nnot caught raw (inert in chromium even unsanitized):\n{}",
        payloads.len(),
        lines.join("\n"),
        missed.join("\n")
    );
    if payloads.len() < complete {
        return;
    }
    assert!(
        caught_total * 100 >= payloads.len() * 95,
        "only {caught_total} of {} raw payloads were caught: the instrumentation or the corpus is broken",
        payloads.len()
    );
    assert!(
        executed_total * 100 >= payloads.len() * 50,
        "only {executed_total} of {} raw payloads executed or loaded anything: the corpus is not live",
        payloads.len()
    );
}

/// The control payload of the navigation detector.
const REFRESH_CONTROL: &str = "<meta http-equiv=\"refresh\" content=\"0;url={{BEACON}}\">";

/// The navigation detector fired: the refresh reached its beacon and the frame was seen
/// navigated.
fn refresh_detected(f: &Findings) -> bool {
    f.beacons > 0 && !f.problems.is_empty()
}

/// Each detector fires on a payload that must trip it.
fn controls_fire(payloads: &[Payload], run: &Run) {
    let by_template: HashMap<&str, String> = payloads
        .iter()
        .map(|p| (p.template.as_str(), p.id()))
        .collect();
    let findings = |template: &str| -> Findings {
        let id = by_template
            .get(template)
            .unwrap_or_else(|| panic!("control payload {template} is not in the corpus"));
        run.findings[id].clone()
    };

    for template in [
        "<script>{{JS}}</script>",
        "<img src=x onerror=\"{{JS}}\">",
        "<img src=\"{{BEACON}}\">",
        "<div style=\"background-image:url({{BEACON}})\">x</div>",
        "<table background=\"{{BEACON}}\"><tr><td>x</td></tr></table>",
        "<svg onload=\"{{JS}}\"></svg>",
    ] {
        let seen = findings(template);
        assert!(seen.beacons > 0, "{template} raw: no beacon ({seen:?})");
    }
    let dialog = findings("<script>alert('{{BEACON}}')</script>");
    assert!(
        dialog.events.iter().any(|e| e == "alert") && dialog.reports.iter().any(|r| r == "alert"),
        "alert not recorded: {dialog:?}"
    );
    let popup = findings("<script>window.open('{{BEACON}}')</script>");
    assert!(
        popup.events.iter().any(|e| e == "open"),
        "window.open not recorded: {popup:?}"
    );
    // Re-run on its own when it lost the race (see the test).
    let refresh = findings(REFRESH_CONTROL);
    assert!(
        refresh_detected(&refresh),
        "meta refresh navigation not detected: {refresh:?}"
    );
    let link = findings("<a href=\"javascript:{{JS}}\">x</a>");
    assert!(
        link.violations.iter().any(|v| v.contains("unsafe url")),
        "javascript: link not flagged by the DOM audit: {link:?}"
    );
}
