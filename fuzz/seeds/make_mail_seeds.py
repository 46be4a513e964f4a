#!/usr/bin/env python3
"""Writes the mail_pipeline seed corpus (fuzz/seeds/mail_pipeline, committed).

- every .eml of dataplane/tests/data/mime; with --with-shared, also every .eml of
  ../shared/testdata/mime (rfc, malformed, thirdparty), written to the working corpus
  fuzz/corpus/mail_pipeline instead (not committed: it is not this project's data);
- every reply body of dataplane/tests/data/replies (the part after the `---` line),
  wrapped as a text/plain or text/html message, and a few as multipart/alternative;
- a handful of hand-written sanitizer probes (script, event handlers, CSS, remote images).
Run from anywhere: python3 fuzz/seeds/make_mail_seeds.py [--with-shared]
"""
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fuzz" / "seeds" / "mail_pipeline"
WORK = ROOT / "fuzz" / "corpus" / "mail_pipeline"
SHARED = ROOT.parent / "shared" / "testdata" / "mime"

HEAD = (
    "From: Ana Lima <ana@example.test>\r\n"
    "To: support@acme.test\r\n"
    "Subject: Re: order 1234\r\n"
    "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    "Message-ID: <seed@example.test>\r\n"
    "MIME-Version: 1.0\r\n"
)


def body_of(path: pathlib.Path) -> str:
    text = path.read_text(encoding="utf-8")
    _, sep, body = text.partition("\n---\n")
    return body if sep else text


def single(ctype: str, body: str) -> bytes:
    return (HEAD + f"Content-Type: {ctype}; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n" + body).encode()


def alternative(text: str, html: str) -> bytes:
    b = "=_seed_boundary"
    return (HEAD + f'Content-Type: multipart/alternative; boundary="{b}"\r\n\r\n'
            f"--{b}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
            f"--{b}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n"
            f"--{b}--\r\n").encode()


PROBES = {
    "probe-script-handlers": '<p onclick="x()">a<script>alert(1)</script><img src=x onerror=alert(1)>'
                             '<a href="java&#x09;script:alert(1)">l</a><svg><a xlink:href="javascript:1">s</a></svg></p>',
    "probe-css": '<td style="color:red;background:url(\'https://t.example/bg.png\') no-repeat;'
                 'width:expression(alert(1));background:\\75 rl(https://x.test/a.png);'
                 'font-family:\'Helvetica Neue\', Arial;margin:0 auto !important">x</td>',
    "probe-remote-images": '<img src="https://t.example/p.gif?u=1&amp;m=2" srcset="https://t.example/a.png 1x, '
                           'https://t.example/b.png 2x"><table background="http://t.example/bg.png"><tr>'
                           '<td background="cid:bg">x</td></tr></table><img src="cid:logo@example.com">',
    "probe-mxss": '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>'
                  '<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>'
                  '<form><math><mtext></form><form><mglyph><style></math><img src onerror=alert(1)>',
    "probe-marker": '<p title="hb00000000000000000000000000000000!x"> src="hb00:https://x.test/a"</p>'
                    '<img data-helpr-remote-src="javascript:alert(1)" src="cid:a">',
    "probe-quote-gmail": '<div dir="ltr">Thanks!</div><br><div class="gmail_quote"><div class="gmail_attr">'
                         'On Mon, Nov 13, 2023 at 10:00 AM Bob &lt;bob@example.test&gt; wrote:<br></div>'
                         '<blockquote class="gmail_quote" style="margin:0 0 0 .8ex">old</blockquote></div>',
}


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    n = 0
    for eml in sorted((ROOT / "dataplane/tests/data/mime").glob("*.eml")):
        shutil.copyfile(eml, OUT / f"eml-dataplane-{eml.stem}")
        n += 1
    if "--with-shared" in sys.argv[1:] and SHARED.is_dir():
        WORK.mkdir(parents=True, exist_ok=True)
        for family in ("rfc", "malformed", "thirdparty"):
            for eml in sorted((SHARED / family).glob("*.eml")):
                shutil.copyfile(eml, WORK / f"eml-{family}-{eml.stem}")
                n += 1
    replies = sorted((ROOT / "dataplane/tests/data/replies").glob("[0-9]*"))
    for r in replies:
        ctype = "text/html" if r.suffix == ".html" else "text/plain"
        (OUT / f"reply-{r.stem}").write_bytes(single(ctype, body_of(r)))
        n += 1
    # Pair each HTML reply with a text reply of the same client family for a few alternatives.
    for (h, t) in [("01", "03"), ("14", "17"), ("18", "19"), ("28", "30"), ("34", "35"), ("38", "39")]:
        hp = next(p for p in replies if p.stem.startswith(h))
        tp = next(p for p in replies if p.stem.startswith(t))
        (OUT / f"alt-{hp.stem}").write_bytes(alternative(body_of(tp), body_of(hp)))
        n += 1
    for name, h in PROBES.items():
        (OUT / name).write_bytes(single("text/html", h))
        n += 1
    print(n, "seeds")


if __name__ == "__main__":
    main()
