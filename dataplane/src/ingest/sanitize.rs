//! Sanitize stage: turns the HTML body of a message into HTML that is safe to store and to
//! show, by allow-list only.
//!
//! The policy is ammonia's HTML parser and tree cleaner configured for email layouts, plus
//! our own rules for what ammonia cannot express:
//!
//! - Only the elements and attributes listed here survive; everything else is dropped, and
//!   the contents of scripts, styles, embedded documents, form controls, SVG and MathML are
//!   dropped with them. Comments are stripped.
//! - URLs (`href`, `src`, `srcset`, `background`) must parse as absolute `http`, `https`,
//!   `mailto` (links only) or `cid` (images only) URLs; they are written back in their
//!   normalized form, so the browser sees exactly the URL that was checked.
//! - Inline CSS is re-serialized from its tokens: only listed properties, only plain values
//!   (keywords, numbers, lengths, colours, strings) and listed functions (`rgb()`, gradients,
//!   `calc()` …). CSS escapes and comments are resolved by the tokenizer before any check, so
//!   `\75 rl(` or `u/**/rl(` cannot smuggle a URL through.
//! - Remote images are blocked: an `<img>` loses its `src`/`srcset`, a table cell its
//!   `background`, a `style` its `url()` declarations. The original `http(s)` URLs are kept,
//!   inert, in `data-helpr-remote-src`, `data-helpr-remote-srcset`,
//!   `data-helpr-remote-background` or `data-helpr-remote-css` (space-separated), so a
//!   viewer can offer to load them through a proxy and style `img[data-helpr-remote-src]`
//!   as the placeholder. `cid:` images are kept.
//! - Links get `rel="noopener noreferrer nofollow"` and `target="_blank"`.
//!
//! No `data-*` attribute of the input survives, so a `data-helpr-remote-*` attribute in the
//! output was always written by this module: ammonia's attribute filter cannot add
//! attributes, so the filter tags each blocked value with a random per-call marker that is
//! renamed into the data attribute after serialization. The marker is unknown to the
//! sender, and if the number of markers found differs from the number written the message is
//! sanitized again without any data attributes.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use ammonia::{Builder, Url, UrlRelative};
use cssparser::{Delimiter, ParseError, Parser, ToCss, Token, TokenSerializationType};

use crate::metrics::Counter;

/// The result of sanitizing one HTML body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanitizedHtml {
    /// The sanitized HTML fragment, ready to be sealed.
    pub html: String,
    /// Remote image references (img `src`/`srcset`, `background` attributes, CSS `url()`
    /// backgrounds) replaced by a placeholder.
    pub blocked_remote_images: usize,
    /// Inline CSS declarations dropped because their property or value is not allowed.
    pub removed_style_declarations: usize,
}

static HTML_SANITIZED: Counter = Counter::new(
    "helpr_ingest_sanitize_total",
    "outcome=\"ok\"",
    "html bodies sanitized",
);
static HTML_SANITIZED_STRICT: Counter = Counter::new(
    "helpr_ingest_sanitize_total",
    "outcome=\"strict\"",
    "html bodies sanitized",
);
static REMOTE_IMAGES_BLOCKED: Counter = Counter::new(
    "helpr_ingest_sanitize_remote_images_blocked_total",
    "",
    "remote image references replaced by a placeholder",
);
static STYLE_DECLARATIONS_REMOVED: Counter = Counter::new(
    "helpr_ingest_sanitize_style_declarations_removed_total",
    "",
    "inline css declarations dropped by the style policy",
);

/// Sanitizes the HTML body of a message with the email policy of this module.
pub fn sanitize_html(html: &str) -> SanitizedHtml {
    let marker = new_marker().filter(|m| !html.contains(m.as_str()));
    let (out, pass) = match marker {
        Some(marker) => {
            let (out, pass) = run_pass(html, Pass::marking(marker));
            match rename_marked(out, &pass.marker, pass.marks) {
                Some(out) => {
                    HTML_SANITIZED.inc();
                    (out, pass)
                }
                None => strict_pass(html),
            }
        }
        None => strict_pass(html),
    };
    if pass.blocked > 0 {
        REMOTE_IMAGES_BLOCKED.add(pass.blocked as u64);
    }
    if pass.removed_style > 0 {
        STYLE_DECLARATIONS_REMOVED.add(pass.removed_style as u64);
    }
    SanitizedHtml {
        html: out,
        blocked_remote_images: pass.blocked,
        removed_style_declarations: pass.removed_style,
    }
}

/// Sanitizes without keeping blocked URLs at all (no data attributes, no marker).
fn strict_pass(html: &str) -> (String, Pass) {
    HTML_SANITIZED_STRICT.inc();
    run_pass(html, Pass::default())
}

fn run_pass(html: &str, pass: Pass) -> (String, Pass) {
    PASS.with_borrow_mut(|slot| *slot = Some(pass));
    let out = POLICY.clean(html).to_string();
    let pass = PASS.with_borrow_mut(Option::take).unwrap_or_default();
    (out, pass)
}

/// Elements kept (without their disallowed attributes). Anything else is unwrapped: its
/// children are sanitized and kept, the element itself is dropped.
#[rustfmt::skip]
const TAGS: &[&str] = &[
    "a", "abbr", "acronym", "address", "article", "aside", "b", "bdi", "bdo", "big",
    "blockquote", "br", "caption", "center", "cite", "code", "col", "colgroup", "dd", "del",
    "dfn", "div", "dl", "dt", "em", "figcaption", "figure", "font", "footer", "h1", "h2", "h3",
    "h4", "h5", "h6", "header", "hr", "i", "img", "ins", "kbd", "li", "main", "mark", "nav",
    "ol", "p", "pre", "q", "rp", "rt", "ruby", "s", "samp", "section", "small", "span",
    "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "time",
    "tr", "tt", "u", "ul", "var", "wbr",
];

/// Elements dropped together with everything inside them: code, styles, embedded documents,
/// form controls, media and foreign (SVG/MathML) content have no text worth keeping.
#[rustfmt::skip]
const DROPPED_WITH_CONTENT: &[&str] = &[
    "applet", "audio", "canvas", "datalist", "embed", "frame", "frameset", "head", "iframe",
    "math", "noembed", "noframes", "noscript", "object", "plaintext", "script", "select",
    "style", "svg", "template", "textarea", "title", "video", "xmp",
];

/// Attributes kept on every allowed element.
#[rustfmt::skip]
const GENERIC_ATTRIBUTES: &[&str] = &[
    "align", "bgcolor", "dir", "height", "lang", "style", "title", "valign", "width",
];

/// Attributes kept on one element.
#[rustfmt::skip]
const TAG_ATTRIBUTES: &[(&str, &[&str])] = &[
    ("a", &["href", "hreflang"]),
    ("img", &["alt", "border", "hspace", "src", "srcset", "vspace"]),
    ("table", &["background", "border", "cellpadding", "cellspacing", "frame", "rules", "summary"]),
    ("td", &["abbr", "background", "colspan", "nowrap", "rowspan", "scope"]),
    ("th", &["abbr", "background", "colspan", "nowrap", "rowspan", "scope"]),
    ("font", &["color", "face", "size"]),
    ("hr", &["color", "noshade", "size"]),
    ("col", &["span"]),
    ("colgroup", &["span"]),
    ("ol", &["reversed", "start", "type"]),
    ("ul", &["type"]),
    ("li", &["type", "value"]),
    ("time", &["datetime"]),
    ("del", &["datetime"]),
    ("ins", &["datetime"]),
];

const LINK_REL: &str = "noopener noreferrer nofollow";

static POLICY: LazyLock<Builder<'static>> = LazyLock::new(|| {
    let tag_attributes: HashMap<&str, HashSet<&str>> = TAG_ATTRIBUTES
        .iter()
        .map(|(tag, attributes)| (*tag, attributes.iter().copied().collect()))
        .collect();
    let mut builder = Builder::empty();
    builder
        .tags(TAGS.iter().copied().collect())
        .clean_content_tags(DROPPED_WITH_CONTENT.iter().copied().collect())
        .generic_attributes(GENERIC_ATTRIBUTES.iter().copied().collect())
        .tag_attributes(tag_attributes)
        .tag_attribute_values(HashMap::new())
        .allowed_classes(HashMap::new())
        .url_schemes(["http", "https", "mailto", "cid"].into_iter().collect())
        .url_relative(UrlRelative::Deny)
        .link_rel(Some(LINK_REL))
        .set_tag_attribute_value("a", "target", "_blank")
        .strip_comments(true)
        .id_prefix(None)
        .attribute_filter(filter_attribute);
    builder
});

/// Attributes whose blocked remote URL is renamed to `data-helpr-remote-<name>`.
const MARKED_ATTRIBUTES: &[&str] = &["src", "srcset", "background"];

/// State of one sanitizer run on this thread: ammonia calls the attribute filter
/// synchronously from `clean`, and the filter must be `'static`.
#[derive(Debug, Default)]
struct Pass {
    /// Random per-call marker; empty when `mark` is false.
    marker: String,
    /// Whether blocked URLs are kept (as marked values) or dropped.
    mark: bool,
    /// Marked values written.
    marks: usize,
    blocked: usize,
    removed_style: usize,
}

thread_local! {
    static PASS: RefCell<Option<Pass>> = const { RefCell::new(None) };
}

impl Pass {
    fn marking(marker: String) -> Self {
        Self {
            marker,
            mark: true,
            ..Self::default()
        }
    }

    fn filter<'u>(
        &mut self,
        element: &str,
        attribute: &str,
        value: &'u str,
    ) -> Option<Cow<'u, str>> {
        // Ammonia also calls the filter on elements it is about to drop (their attributes
        // are never written); skip them so that they do not count.
        if !TAGS.contains(&element) {
            return None;
        }
        match attribute {
            "style" => self.filter_style(value),
            "href" if element != "a" => None,
            "src" | "srcset" if element != "img" => None,
            "background" if !matches!(element, "table" | "td" | "th") => None,
            "href" => match classify_url(value) {
                UrlKind::Remote(url) | UrlKind::Mailto(url) => Some(Cow::Owned(url)),
                UrlKind::Cid(_) | UrlKind::Other => None,
            },
            "src" | "background" => match classify_url(value) {
                UrlKind::Cid(url) => Some(Cow::Owned(url)),
                UrlKind::Remote(url) => {
                    self.blocked += 1;
                    self.marked(url)
                }
                UrlKind::Mailto(_) | UrlKind::Other => None,
            },
            "srcset" => {
                let remote = remote_srcset_urls(value);
                if remote.is_empty() {
                    None
                } else {
                    self.blocked += 1;
                    self.marked(remote.join(" "))
                }
            }
            // Every other attribute reaching the filter is on the allow list and carries
            // no URL; `target` and `rel` are the values ammonia sets on links.
            _ => Some(Cow::Borrowed(value)),
        }
    }

    /// The value that `rename_marked` turns into a data attribute, or `None` in strict mode.
    /// It parses as an absolute URL so that ammonia's relative-URL rule leaves it alone.
    fn marked<'u>(&mut self, urls: String) -> Option<Cow<'u, str>> {
        if !self.mark {
            return None;
        }
        self.marks += 1;
        Some(Cow::Owned(format!("{}:{urls}", self.marker)))
    }

    fn filter_style<'u>(&mut self, value: &str) -> Option<Cow<'u, str>> {
        let FilteredStyle {
            mut css,
            remote_images,
            removed,
        } = filter_style(value);
        self.removed_style += removed;
        if !remote_images.is_empty() {
            self.blocked += remote_images.len();
            if self.mark {
                self.marks += 1;
                css.push_str(&self.marker);
                css.push('!');
                css.push_str(&remote_images.join(" "));
            }
        }
        (!css.is_empty()).then_some(Cow::Owned(css))
    }
}

fn filter_attribute<'u>(element: &str, attribute: &str, value: &'u str) -> Option<Cow<'u, str>> {
    PASS.with_borrow_mut(|pass| match pass.as_mut() {
        Some(pass) => pass.filter(element, attribute, value),
        // Not inside `run_pass`: keep nothing rather than guess.
        None => None,
    })
}

/// Renames the marked values of the serialized HTML into `data-helpr-remote-*` attributes.
/// `None` if the markers found are not exactly the `expected` ones this run wrote.
fn rename_marked(mut html: String, marker: &str, expected: usize) -> Option<String> {
    let mut found = 0;
    for attribute in MARKED_ATTRIBUTES {
        let from = format!(" {attribute}=\"{marker}:");
        let count = html.matches(&from).count();
        if count > 0 {
            found += count;
            html = html.replace(&from, &format!(" data-helpr-remote-{attribute}=\""));
        }
    }
    // A style with nothing left but blocked images becomes just the data attribute.
    let from = format!(" style=\"{marker}!");
    let count = html.matches(&from).count();
    if count > 0 {
        found += count;
        html = html.replace(&from, " data-helpr-remote-css=\"");
    }
    // Inside a style value: close it and open the data attribute (the serializer escaped
    // every `"` of the value, so the only quotes are the attribute's own).
    let from = format!("{marker}!");
    let count = html.matches(&from).count();
    if count > 0 {
        found += count;
        html = html.replace(&from, "\" data-helpr-remote-css=\"");
    }
    (found == expected && !html.contains(marker)).then_some(html)
}

/// `hb` and 32 hex digits: unguessable, a valid URL scheme, and never altered by HTML
/// serialization.
fn new_marker() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).ok()?;
    let mut marker = String::with_capacity(34);
    marker.push_str("hb");
    for byte in bytes {
        marker.push_str(&format!("{byte:02x}"));
    }
    Some(marker)
}

enum UrlKind {
    /// `http` or `https` with a host, normalized.
    Remote(String),
    Mailto(String),
    Cid(String),
    Other,
}

/// Classifies a URL attribute value the way a browser parses it (WHATWG URL: surrounding
/// spaces and control characters trimmed, tabs and newlines removed). Relative URLs are
/// `Other`: in a stored message they have no meaningful base.
fn classify_url(value: &str) -> UrlKind {
    let Ok(url) = Url::parse(value) else {
        return UrlKind::Other;
    };
    match url.scheme() {
        "http" | "https" if url.host().is_some() => UrlKind::Remote(url.into()),
        "mailto" => UrlKind::Mailto(url.into()),
        "cid" if url.as_str().len() > "cid:".len() => UrlKind::Cid(url.into()),
        _ => UrlKind::Other,
    }
}

/// The `http(s)` image candidates of a `srcset` (descriptors and anything else dropped).
fn remote_srcset_urls(srcset: &str) -> Vec<String> {
    srcset
        .split_ascii_whitespace()
        .map(|candidate| candidate.trim_matches(','))
        .filter_map(|candidate| match classify_url(candidate) {
            UrlKind::Remote(url) => Some(url),
            _ => None,
        })
        .collect()
}

/// CSS properties kept in `style` attributes: layout, box, text and colour properties that
/// email layouts use. Nothing that positions content over the viewer (`position`,
/// `z-index`), generates content (`content`) or takes only URLs (`cursor`, `filter`,
/// `list-style-image`, `border-image`, `mask`, `behavior`, `-moz-binding`).
#[rustfmt::skip]
const STYLE_PROPERTIES: &[&str] = &[
    "-ms-text-size-adjust", "-webkit-text-size-adjust", "background", "background-color",
    "background-image", "background-position", "background-repeat", "background-size", "border",
    "border-bottom", "border-bottom-color", "border-bottom-left-radius",
    "border-bottom-right-radius", "border-bottom-style", "border-bottom-width",
    "border-collapse", "border-color", "border-left", "border-left-color", "border-left-style",
    "border-left-width", "border-radius", "border-right", "border-right-color",
    "border-right-style", "border-right-width", "border-spacing", "border-style", "border-top",
    "border-top-color", "border-top-left-radius", "border-top-right-radius", "border-top-style",
    "border-top-width", "border-width", "box-shadow", "box-sizing", "caption-side", "clear",
    "color", "direction", "display", "empty-cells", "float", "font", "font-family", "font-size",
    "font-style", "font-variant", "font-weight", "height", "letter-spacing", "line-height",
    "list-style", "list-style-position", "list-style-type", "margin", "margin-bottom",
    "margin-left", "margin-right", "margin-top", "max-height", "max-width", "min-height",
    "min-width", "opacity", "overflow", "overflow-wrap", "overflow-x", "overflow-y", "padding",
    "padding-bottom", "padding-left", "padding-right", "padding-top", "table-layout",
    "text-align", "text-decoration", "text-decoration-color", "text-decoration-line",
    "text-decoration-style", "text-indent", "text-overflow", "text-shadow", "text-transform",
    "vertical-align", "visibility", "white-space", "width", "word-break", "word-spacing",
    "word-wrap",
];

/// Properties whose `url()` is an image worth keeping for a later, proxied load.
const IMAGE_PROPERTIES: &[&str] = &["background", "background-image"];

/// CSS functions kept in values; none of them loads anything.
#[rustfmt::skip]
const STYLE_FUNCTIONS: &[&str] = &[
    "calc", "hsl", "hsla", "linear-gradient", "radial-gradient", "repeating-linear-gradient",
    "repeating-radial-gradient", "rgb", "rgba",
];

/// Functions whose argument is a URL (loaded by the browser).
const URL_FUNCTIONS: &[&str] = &["url", "src"];

/// Checked on the re-serialized declaration as a last line of defence: none of these can
/// appear in an allowed value.
#[rustfmt::skip]
const STYLE_FORBIDDEN: &[&str] = &[
    "url(", "src(", "expression", "javascript", "vbscript", "@import", "behavior", "binding",
    "image-set", "\\",
];

#[derive(Debug, Default)]
struct FilteredStyle {
    css: String,
    remote_images: Vec<String>,
    removed: usize,
}

/// Filters one `style` attribute value: keeps allowed declarations, re-serialized from
/// their tokens, and collects the remote image URLs of background declarations (which are
/// dropped like every other `url()`).
fn filter_style(style: &str) -> FilteredStyle {
    let mut out = FilteredStyle::default();
    let mut parser = Parser::new(style);
    while !parser.is_exhausted() {
        let mut remote = Vec::new();
        let parsed =
            parser.parse_until_after(Delimiter::Semicolon, |p| parse_declaration(p, &mut remote));
        out.remote_images.append(&mut remote);
        match parsed {
            Ok(Some((name, value))) => {
                if !out.css.is_empty() {
                    out.css.push(';');
                }
                out.css.push_str(&name);
                out.css.push(':');
                out.css.push_str(&value);
            }
            Ok(None) => {}
            Err(_) => out.removed += 1,
        }
    }
    out
}

type DeclarationResult = Result<Option<(String, String)>, ParseError<()>>;

/// One declaration (up to its `;`): `Ok(None)` if empty, `Err` if not allowed.
fn parse_declaration<'i>(p: &mut Parser<'i>, remote: &mut Vec<String>) -> DeclarationResult {
    if p.is_exhausted() {
        return Ok(None);
    }
    let name = p.expect_ident()?.to_ascii_lowercase();
    p.expect_colon()?;
    let mut value = StyleValue {
        collect_images: IMAGE_PROPERTIES.contains(&name.as_str()),
        ..StyleValue::default()
    };
    value.scan(p, 0);
    let css = value.css.trim().to_owned();
    let lowered = css.to_ascii_lowercase();
    remote.append(&mut value.remote_images);
    if !STYLE_PROPERTIES.contains(&name.as_str())
        || value.rejected
        || css.is_empty()
        || STYLE_FORBIDDEN.iter().any(|f| lowered.contains(f))
    {
        return Err(ParseError::custom(()));
    }
    Ok(Some((name, css)))
}

/// A declaration value being re-serialized token by token.
#[derive(Debug)]
struct StyleValue {
    css: String,
    previous: TokenSerializationType,
    /// Set by any token or function not on the allow list; the value is then only scanned
    /// for image URLs.
    rejected: bool,
    collect_images: bool,
    remote_images: Vec<String>,
}

impl Default for StyleValue {
    fn default() -> Self {
        Self {
            css: String::new(),
            previous: TokenSerializationType::Nothing,
            rejected: false,
            collect_images: false,
            remote_images: Vec::new(),
        }
    }
}

impl StyleValue {
    fn scan(&mut self, p: &mut Parser<'_>, depth: usize) {
        loop {
            let token = match p.next_including_whitespace() {
                Ok(token) => token.clone(),
                Err(_) => return,
            };
            match token {
                Token::WhiteSpace(_) => {
                    self.css.push(' ');
                    self.previous = token.serialization_type();
                }
                Token::Ident(_)
                | Token::Hash(_)
                | Token::IDHash(_)
                | Token::QuotedString(_)
                | Token::Number { .. }
                | Token::Percentage { .. }
                | Token::Dimension { .. }
                | Token::Comma
                | Token::Delim('/' | '+' | '-' | '*' | '!') => self.write(&token),
                Token::UnquotedUrl(url) => {
                    self.rejected = true;
                    self.image_url(&url);
                }
                Token::Function(name) => {
                    let name = name.to_ascii_lowercase();
                    if URL_FUNCTIONS.contains(&name.as_str()) {
                        self.rejected = true;
                        let url = p.parse_nested_block(|p| {
                            let url = p.expect_string()?.to_string();
                            p.expect_exhausted()?;
                            Ok::<_, ParseError<()>>(url)
                        });
                        if let Ok(url) = url {
                            self.image_url(&url);
                        }
                        continue;
                    }
                    if !STYLE_FUNCTIONS.contains(&name.as_str()) {
                        self.rejected = true;
                    }
                    self.write(&Token::Function(name.into()));
                    self.nested(p, depth);
                }
                Token::ParenthesisBlock if depth > 0 => {
                    self.write(&token);
                    self.nested(p, depth);
                }
                Token::ParenthesisBlock | Token::SquareBracketBlock | Token::CurlyBracketBlock => {
                    self.rejected = true;
                    self.nested(p, depth);
                }
                _ => self.rejected = true,
            }
        }
    }

    /// Scans the block just opened and closes it.
    fn nested(&mut self, p: &mut Parser<'_>, depth: usize) {
        let scanned = p.parse_nested_block(|p| {
            self.scan(p, depth + 1);
            Ok::<_, ParseError<()>>(())
        });
        if scanned.is_err() {
            self.rejected = true;
        }
        self.css.push(')');
        self.previous = TokenSerializationType::Nothing;
    }

    fn write(&mut self, token: &Token<'_>) {
        let kind = token.serialization_type();
        if self.previous.needs_separator_when_before(kind) {
            self.css.push(' ');
        }
        if token.to_css(&mut self.css).is_err() {
            self.rejected = true;
        }
        self.previous = kind;
    }

    fn image_url(&mut self, url: &str) {
        if !self.collect_images {
            return;
        }
        if let UrlKind::Remote(url) = classify_url(url) {
            self.remote_images.push(url);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(html: &str) -> String {
        sanitize_html(html).html
    }

    #[test]
    fn email_layout_tables_and_formatting_survive() {
        let html = r##"<table width="600" cellpadding="0" cellspacing="0" border="0" align="center" bgcolor="#ffffff"><tbody><tr><td valign="top" colspan="2" style="padding:10px;color:#333333;font-family:Arial, sans-serif">Hello <b>bold</b> <font color="red" face="Arial" size="2">font</font></td></tr></tbody></table>"##;
        let out = clean(html);
        assert_eq!(
            out,
            r##"<table width="600" cellpadding="0" cellspacing="0" border="0" align="center" bgcolor="#ffffff"><tbody><tr><td valign="top" colspan="2" style="padding:10px;color:#333333;font-family:Arial, sans-serif">Hello <b>bold</b> <font color="red" face="Arial" size="2">font</font></td></tr></tbody></table>"##
        );
    }

    #[test]
    fn scripts_are_removed_with_their_content() {
        let out = clean("a<script>alert(1)</script><SCRIPT SRC=//x.test/x.js></SCRIPT>b");
        assert_eq!(out, "ab");
    }

    #[test]
    fn event_handler_attributes_are_removed() {
        let out = clean(
            r#"<p onclick="x()" onmouseover=y() OnLoad="z">t</p><img src=cid:a onerror=alert(1)>"#,
        );
        assert_eq!(out, r#"<p>t</p><img src="cid:a">"#);
    }

    #[test]
    fn style_elements_forms_iframes_objects_embeds_meta_base_are_removed() {
        let out = clean(
            r#"<style>*{color:red}</style><form action="https://x.test"><input name=a><button>Go</button></form><iframe src="https://x.test"></iframe><object data="https://x.test/o"></object><embed src="https://x.test/e"><meta http-equiv="refresh" content="0;url=https://x.test"><base href="https://x.test/"><link rel=stylesheet href="https://x.test/s.css">"#,
        );
        assert_eq!(out, "Go");
    }

    #[test]
    fn svg_and_mathml_are_removed_with_their_content() {
        let out = clean(
            r#"<svg><script>alert(1)</script><a xlink:href="javascript:alert(1)"><text>x</text></a></svg><math><mtext><a href="javascript:alert(1)">m</a></mtext></math>ok"#,
        );
        assert_eq!(out, "ok");
    }

    #[test]
    fn dangerous_url_schemes_are_removed_from_links() {
        for href in [
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            " javascript:alert(1)",
            "java\tscript:alert(1)",
            "java&#x09;script:alert(1)",
            "&#106;avascript:alert(1)",
            "vbscript:msgbox(1)",
            "data:text/html,<script>alert(1)</script>",
            "DATA:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
            "cid:part1",
            "/relative",
            "//x.test/protocol-relative",
            "file:///etc/passwd",
        ] {
            let out = clean(&format!(r#"<a href="{href}">x</a>"#));
            assert!(!out.contains("href"), "{href} -> {out}");
            assert!(
                out.contains(r#"rel="noopener noreferrer nofollow""#),
                "{out}"
            );
            assert!(out.contains(r#"target="_blank""#), "{out}");
        }
    }

    #[test]
    fn links_get_rel_and_target_blank() {
        let out = clean(
            r#"<a href="https://example.com/a?b=1&amp;c=2" target="_self" rel="opener">x</a> <a href="mailto:a@example.com">m</a>"#,
        );
        assert_eq!(
            out,
            r#"<a href="https://example.com/a?b=1&amp;c=2" target="_blank" rel="noopener noreferrer nofollow">x</a> <a href="mailto:a@example.com" target="_blank" rel="noopener noreferrer nofollow">m</a>"#
        );
    }

    #[test]
    fn remote_images_are_replaced_by_a_placeholder_keeping_the_url_as_data() {
        let result = sanitize_html(
            r#"<img src="https://t.example/p.gif?u=1&amp;m=2" alt="logo" width="1" height="1">"#,
        );
        assert_eq!(
            result.html,
            r#"<img data-helpr-remote-src="https://t.example/p.gif?u=1&amp;m=2" alt="logo" width="1" height="1">"#
        );
        assert_eq!(result.blocked_remote_images, 1);
    }

    #[test]
    fn srcset_and_background_attributes_are_blocked() {
        let result = sanitize_html(
            r#"<img srcset="https://t.example/a.png 1x, https://t.example/b.png 2x, javascript:alert(1) 3x"><table background="http://t.example/bg.png"><tr><td background="https://t.example/td.png">x</td></tr></table>"#,
        );
        assert_eq!(
            result.html,
            r#"<img data-helpr-remote-srcset="https://t.example/a.png https://t.example/b.png"><table data-helpr-remote-background="http://t.example/bg.png"><tbody><tr><td data-helpr-remote-background="https://t.example/td.png">x</td></tr></tbody></table>"#
        );
        assert_eq!(result.blocked_remote_images, 3);
    }

    #[test]
    fn cid_images_are_kept() {
        let result = sanitize_html(r#"<img src="cid:logo@example.com" alt="logo">"#);
        assert_eq!(
            result.html,
            r#"<img src="cid:logo@example.com" alt="logo">"#
        );
        assert_eq!(result.blocked_remote_images, 0);
    }

    #[test]
    fn data_and_relative_image_urls_are_removed_not_kept() {
        for src in [
            "data:image/png;base64,iVBORw0KGgo=",
            "data:image/svg+xml,<svg onload=alert(1)>",
            "/track.gif",
            "track.gif",
            "javascript:alert(1)",
            "mailto:a@example.com",
        ] {
            let result = sanitize_html(&format!(r#"<img src="{src}" alt="a">"#));
            assert_eq!(result.html, r#"<img alt="a">"#, "{src}");
            assert_eq!(result.blocked_remote_images, 0);
        }
        let out = clean(r#"<td background="data:image/png;base64,AAAA">x</td>"#);
        assert!(!out.contains("data:"), "{out}");
    }

    #[test]
    fn attacker_supplied_data_attributes_are_dropped() {
        let out = clean(
            r#"<img data-helpr-remote-src="javascript:alert(1)" src="cid:a"><p data-x="1" data-helpr-remote-css="https://x.test/a" id="x" class="c" name="n">t</p>"#,
        );
        assert_eq!(out, r#"<img src="cid:a"><p>t</p>"#);
    }

    #[test]
    fn a_guessed_marker_cannot_forge_attributes() {
        // Whatever the marker is, text that looks like a marked value stays text.
        let html = r#"<p title="hb00000000000000000000000000000000!x" onclick="y"> src="hb00:https://x.test/a"</p>"#;
        let out = clean(html);
        assert!(!out.contains("data-helpr-remote"), "{out}");
        assert!(!out.contains("onclick"), "{out}");
    }

    #[test]
    fn safe_inline_css_is_kept_and_normalized() {
        let out = clean(
            r#"<p style="COLOR: Red; font-family: 'Helvetica Neue', Arial; margin:0 auto !important; background:linear-gradient(#fff, rgba(0,0,0,.5))">t</p>"#,
        );
        assert_eq!(
            out,
            r#"<p style="color:Red;font-family:&quot;Helvetica Neue&quot;, Arial;margin:0 auto !important;background:linear-gradient(#fff, rgba(0,0,0,0.5))">t</p>"#
        );
    }

    #[test]
    fn css_that_loads_or_executes_is_removed() {
        for style in [
            "background-image:url(javascript:alert(1))",
            "width:expression(alert(1))",
            "behavior:url(x.htc)",
            "-moz-binding:url(https://x.test/x.xml#x)",
            "color:red;@import 'https://x.test/x.css'",
            r"background:\75 rl(https://x.test/a.png)",
            r"background:u\72 l(https://x.test/a.png)",
            "background:u/**/rl(https://x.test/a.png)",
            r"width:\65 xpression(alert(1))",
            "width:exp/**/ression(alert(1))",
            "background:image-set('https://x.test/a.png' 1x)",
            "background:-webkit-image-set(url(https://x.test/a.png) 1x)",
            "list-style:url(https://x.test/a.png)",
            "cursor:url(https://x.test/c.cur),auto",
            "content:url(https://x.test/a.png)",
            "filter:url(https://x.test/f.svg#f)",
            "position:fixed;top:0;left:0",
            "color:var(--x)",
            "background:src('https://x.test/a.png')",
            "font-family:'a\\22 b'",
        ] {
            let out = clean(&format!(r#"<p style="{style}">t</p>"#));
            let lowered = out.to_ascii_lowercase();
            for bad in [
                "url",
                "expression",
                "import",
                "binding",
                "behavior",
                "image-set",
                "position",
                "var(",
                "src(",
            ] {
                assert!(!lowered.contains(bad), "{style} -> {out}");
            }
        }
    }

    #[test]
    fn css_background_beacons_are_counted_and_kept_as_data() {
        let result = sanitize_html(
            r#"<table><tr><td style="color:red;background:url('https://t.example/bg.png') no-repeat;background-image:url(http://t.example/b2.png)">x</td></tr></table>"#,
        );
        assert_eq!(
            result.html,
            r#"<table><tbody><tr><td style="color:red" data-helpr-remote-css="https://t.example/bg.png http://t.example/b2.png">x</td></tr></tbody></table>"#
        );
        assert_eq!(result.blocked_remote_images, 2);
        assert_eq!(result.removed_style_declarations, 2);
    }

    #[test]
    fn a_style_with_nothing_left_is_dropped() {
        let out = clean(r#"<p style="position:absolute">t</p>"#);
        assert_eq!(out, "<p>t</p>");
    }

    #[test]
    fn comments_are_stripped() {
        assert_eq!(
            clean("a<!-- secret <img src=x onerror=alert(1)> -->b"),
            "ab"
        );
    }

    #[test]
    fn mutation_xss_through_raw_text_elements_stays_inert() {
        for html in [
            r#"<noscript><p title="</noscript><img src=x onerror=alert(1)>">"#,
            r#"<svg><style><img src=x onerror=alert(1)></style></svg>"#,
            r#"<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>"#,
            r#"<form><math><mtext></form><form><mglyph><style></math><img src onerror=alert(1)>"#,
            r#"<textarea></textarea><img src=x onerror=alert(1)></textarea>"#,
            r#"<template><img src=x onerror=alert(1)></template>"#,
            r#"<title><img src=x onerror=alert(1)></title>"#,
        ] {
            let out = clean(html);
            // Re-sanitizing the output is a fixed point, and no handler survives either
            // pass (a mutation would show up as a difference).
            assert_eq!(clean(&out), out, "{html}");
            assert!(!out.contains("onerror="), "{html} -> {out}");
            assert!(!out.contains("<img src=\"x"), "{html} -> {out}");
        }
    }

    #[test]
    fn image_tag_alias_is_treated_as_img() {
        let result = sanitize_html(r#"<image src="https://t.example/i.png">"#);
        assert_eq!(
            result.html,
            r#"<img data-helpr-remote-src="https://t.example/i.png">"#
        );
        assert_eq!(result.blocked_remote_images, 1);
    }

    #[test]
    fn picture_sources_and_video_posters_load_nothing() {
        let out = clean(
            r#"<picture><source srcset="https://t.example/a.webp"><img src="cid:x"></picture><video poster="https://t.example/p.png"><source src="https://t.example/v.mp4"></video>"#,
        );
        assert_eq!(out, r#"<img src="cid:x">"#);
    }

    #[test]
    fn urls_are_written_back_normalized() {
        let out = clean("<a href=\"https://exa\tmple.com/a b\">x</a>");
        assert_eq!(
            out,
            r#"<a href="https://example.com/a%20b" target="_blank" rel="noopener noreferrer nofollow">x</a>"#
        );
    }

    #[test]
    fn counters_count_blocked_images() {
        let before = REMOTE_IMAGES_BLOCKED.get();
        let sanitized = HTML_SANITIZED.get();
        sanitize_html(r#"<img src="https://t.example/c.png">"#);
        assert!(REMOTE_IMAGES_BLOCKED.get() > before);
        assert!(HTML_SANITIZED.get() > sanitized);
    }

    #[test]
    fn rename_marked_refuses_unexpected_markers() {
        let marker = "hb0123";
        let html = format!(r#"<img src="{marker}:https://x.test/a">"#);
        assert_eq!(
            rename_marked(html.clone(), marker, 1).as_deref(),
            Some(r#"<img data-helpr-remote-src="https://x.test/a">"#)
        );
        assert_eq!(rename_marked(html, marker, 0), None);
        assert_eq!(rename_marked(format!("<p>{marker}</p>"), marker, 0), None);
    }

    #[test]
    fn strict_pass_drops_blocked_urls_without_data_attributes() {
        let (out, pass) = run_pass(
            r#"<img src="https://t.example/a.png"><table background="https://t.example/b.png"><tr><td style="color:red;background:url(https://t.example/c.png)">x</td></tr></table>"#,
            Pass::default(),
        );
        assert_eq!(
            out,
            r#"<img><table><tbody><tr><td style="color:red">x</td></tr></tbody></table>"#
        );
        assert_eq!(pass.blocked, 3);
        assert_eq!(pass.marks, 0);
    }

    #[test]
    fn dropped_elements_do_not_count_as_blocked_images() {
        let result = sanitize_html(
            r#"<iframe src="https://t.example/f"></iframe><picture><source srcset="https://t.example/s.png"></picture><video poster="https://t.example/p.png"></video><svg><image href="https://t.example/i.png" style="background:url(https://t.example/j.png)"></image></svg>"#,
        );
        assert_eq!(result.html, "");
        assert_eq!(result.blocked_remote_images, 0);
    }

    #[test]
    fn a_style_left_with_only_blocked_images_becomes_the_data_attribute() {
        let result = sanitize_html(r#"<p style="background:url(https://t.example/a.png)">t</p>"#);
        assert_eq!(
            result.html,
            r#"<p data-helpr-remote-css="https://t.example/a.png">t</p>"#
        );
    }

    #[test]
    fn deeply_nested_markup_does_not_overflow() {
        let html = "<div>".repeat(5_000) + "x" + &"</div>".repeat(5_000);
        let out = clean(&html);
        assert!(out.contains('x'));
    }
}
