"""Text helpers: turn SDP's HTML into clean plain text."""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser

_BLOCK_TAGS = {
    "p", "div", "br", "li", "ul", "ol", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6",
    "blockquote", "pre", "hr", "section", "article", "header", "footer",
}  # fmt: skip
_SKIP_TAGS = {"script", "style", "head", "title", "noscript"}
# A well-formed tag: name, attributes (quoted values without < or >), optional self-closing slash.
_TAG = re.compile(
    r"<(/?)([a-zA-Z][a-zA-Z0-9]*)((?:\s+[a-zA-Z_:][-a-zA-Z0-9_:.]*"
    r"(?:\s*=\s*(?:\"[^\"<>]*\"|'[^'<>]*'|[^\s\"'<>=`]+))?)*)\s*(/?)>"
)
_BLANKS = re.compile(r"[ \t\r\f\v\xa0]+")
_PARAGRAPHS = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.parts.append(data)


def html_to_text(value: str | None) -> str:
    """Return readable plain text for an HTML fragment (tags dropped, entities decoded)."""
    if not value:
        return ""
    value = value.replace("\x00", "")
    text: str | None = value if "<" not in value and "&" not in value else _simple_html_text(value)
    if text is None:
        parser = _TextExtractor()
        parser.feed(value)
        parser.close()
        text = "".join(parser.parts)
    # Runs of blanks become one space (one pass over the whole text: the class holds no newline), lines are trimmed.
    lines = [line.strip() for line in _BLANKS.sub(" ", text).split("\n")]
    return _PARAGRAPHS.sub("\n\n", "\n".join(lines)).strip()


def _simple_html_text(value: str) -> str | None:
    """Return what _TextExtractor makes of HTML made only of well-formed tags and text, else None.

    What SDP returns is mostly that (paragraphs, breaks, lists, spans): one regular-expression pass instead of
    HTMLParser's. Anything else (a stray "<", a comment, script or style, an odd end tag) is left to HTMLParser;
    tests/test_text.py checks on generated HTML that both give the same text.
    """
    parts: list[str] = []
    position = 0
    for match in _TAG.finditer(value):
        data = value[position : match.start()]
        if "<" in data:
            return None
        if data:
            parts.append(unescape(data))
        closing, name, attributes, self_closing = match.groups()
        name = name.lower()
        if name in _SKIP_TAGS or (closing and (attributes or self_closing)):
            return None
        if not closing:  # a start tag (HTMLParser treats <x/> as a start tag, then an end tag)
            if name in _BLOCK_TAGS:
                parts.append("\n")
            if name == "li":
                parts.append("- ")
        if (closing or self_closing) and name in _BLOCK_TAGS:
            parts.append("\n")
        position = match.end()
    rest = value[position:]
    if "<" in rest:
        return None
    if rest:
        parts.append(unescape(rest))
    return "".join(parts)
