"""html_to_text: SDP's HTML to plain text; the one-pass path for simple HTML gives what HTMLParser gives."""

from __future__ import annotations

import random

from tickets import text
from tickets.text import html_to_text

PIECES = [
    "<p>", "</p>", "<div>", "</div>", "<br>", "<br/>", "<br />", "<BR>", "<li>", "</li>", "<li/>", "<ul>", "</ul>",
    "<span style=\"color:red\">", "</span>", "<a href='https://x.example/a?b=1&amp;c=2'>", "</a>", "<b>", "</b>",
    "<a href=/x/>", "<img src=x.png alt=\"a > b\">", "<td class=x>", "</td >", "</p/>", "</p class=x>",
    "<script>alert(1)</script>", "<style>p{}</style>", "<title>t</title>", "<!-- note -->", "<!DOCTYPE html>",
    "<?xml x?>", "< p>", "a < b", "x<3", "<", ">", "&amp;", "&lt;", "&gt;", "&nbsp;", "&#233;", "&#x41;", "&bogus;",
    "&amp", "&", "Outlook keeps asking", " for the password ", "\\n", "\n", "\t", "\xa0", "  ", "é", "日本", "<h1>",
    "</h1>", "<table><tr><td>a</td><td>b</td></tr></table>", "<p\nclass=\"x\">", "<input disabled>", "<x-y>",
]  # fmt: skip


def _reference(value: str) -> str:
    """html_to_text with HTMLParser only (the fast path switched off)."""
    original = text._simple_html_text
    text._simple_html_text = lambda value: None  # type: ignore[assignment]
    try:
        return html_to_text(value)
    finally:
        text._simple_html_text = original


def test_simple_html_gives_what_htmlparser_gives():
    rng = random.Random(20261201)
    simple = [p for p in PIECES if text._simple_html_text(p) is not None]
    samples = ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 30))) for _ in range(3000)]
    samples += ["".join(rng.choice(simple) for _ in range(rng.randint(1, 30))) for _ in range(3000)]
    samples += PIECES + ["<p>Outlook keeps asking</p><br /><p>for the password &amp; more</p>", "plain & simple"]
    fast = sum(1 for s in samples if text._simple_html_text(s) is not None)
    assert fast > 2500  # the one-pass path is taken often enough to be tested
    assert [html_to_text(s) for s in samples] == [_reference(s) for s in samples]


def test_sdp_html_becomes_readable_text():
    sdp = "<div><p>Printer <b>offline</b></p><ul><li>Restart</li><li>Check &amp; test</li></ul></div>"
    assert html_to_text(sdp) == "Printer offline\n\n- Restart\n\n- Check & test"
    assert html_to_text("<p>a</p><script>alert(1)</script><p>b&nbsp;&nbsp;c</p>") == "a\n\nb c"
    assert html_to_text(None) == "" and html_to_text("x\x00y") == "xy"
