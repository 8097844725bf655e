"""Text helpers: turn SDP's HTML into clean plain text."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCK_TAGS = {
    "p", "div", "br", "li", "ul", "ol", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6",
    "blockquote", "pre", "hr", "section", "article", "header", "footer",
}  # fmt: skip
_SKIP_TAGS = {"script", "style", "head", "title", "noscript"}
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
    if "<" not in value and "&" not in value:
        text = value
    else:
        parser = _TextExtractor()
        parser.feed(value)
        parser.close()
        text = "".join(parser.parts)
    # Runs of blanks become one space (one pass over the whole text: the class holds no newline), lines are trimmed.
    lines = [line.strip() for line in _BLANKS.sub(" ", text).split("\n")]
    return _PARAGRAPHS.sub("\n\n", "\n".join(lines)).strip()
