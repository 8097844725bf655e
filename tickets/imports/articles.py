"""import_articles: knowledge articles from a folder of Markdown/HTML files or a CSV file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

from tickets.imports.report import ImportReport, open_csv
from tickets.models import KnowledgeArticle, Tenant, field_max_lengths
from tickets.services import article_upsert
from tickets.text import html_to_text

ARTICLE_SUFFIXES = (".md", ".markdown", ".html", ".htm")
_ARTICLE_LIMITS = field_max_lengths(KnowledgeArticle)
_url = URLValidator(schemes=["http", "https"])


@dataclass
class ArticleRecord:
    """One article read from a file or a CSV record, before validation."""

    where: str
    title: str
    url: str = ""
    body: str = ""
    tags: str = ""


def _markdown_article(path: Path) -> ArticleRecord:
    """Read `# Title`, then optional `Tags:` and `URL:` lines, then the body."""
    record = ArticleRecord(where=path.name, title="")
    body: list[str] = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        stripped = line.strip()
        if not body and not record.title and stripped.startswith("# "):
            record.title = stripped[2:].strip()
        elif not body and stripped.lower().startswith("tags:"):
            record.tags = stripped.split(":", 1)[1].strip()
        elif not body and stripped.lower().startswith("url:"):
            record.url = stripped.split(":", 1)[1].strip()
        elif stripped or body:
            body.append(line)
    record.body = "\n".join(body).strip()
    return record


class _HtmlHead(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.h1 = ""
        self.url = ""
        self.keywords = ""
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag in ("title", "h1"):
            self._in = tag
        elif tag == "link" and values.get("rel", "").lower() == "canonical":
            self.url = values.get("href", "")
        elif tag == "meta" and values.get("name", "").lower() == "keywords":
            self.keywords = values.get("content", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in == "h1":
            self.h1 += data


def _html_article(path: Path) -> ArticleRecord:
    """Read the title (<title>, else <h1>), canonical URL, keywords and the page text."""
    html = path.read_text(encoding="utf-8-sig")
    head = _HtmlHead()
    head.feed(html)
    return ArticleRecord(
        where=path.name,
        title=" ".join((head.title or head.h1).split()),
        url=head.url.strip(),
        body=html_to_text(html),
        tags=head.keywords.strip(),
    )


def _article_records(path: Path) -> Iterator[ArticleRecord]:
    if path.is_dir():
        for file in sorted(path.iterdir()):
            if file.suffix.lower() in (".md", ".markdown"):
                yield _markdown_article(file)
            elif file.suffix.lower() in (".html", ".htm"):
                yield _html_article(file)
        return
    for line, row in open_csv(path=path):
        yield ArticleRecord(
            where=f"line {line}",
            title=row.get("title", ""),
            url=row.get("url", ""),
            body=row.get("body", ""),
            tags=row.get("tags", ""),
        )


def article_import(*, tenant: Tenant, path: Path) -> ImportReport:
    """Validate and import knowledge articles from a folder of Markdown/HTML files or a CSV; return the report."""
    report = ImportReport()
    if path.is_file() and path.suffix.lower() != ".csv":
        report.skip(path.name, "not a CSV: give a folder of .md/.html files or a .csv file")
        return report
    seen: dict[str, str] = {}
    for record in _article_records(path):
        errors = []
        title = " ".join(record.title.split())
        if not title:
            errors.append("no title: an article needs one")
        elif len(title) > _ARTICLE_LIMITS["title"]:
            errors.append(f"title too long: {len(title)} characters, at most {_ARTICLE_LIMITS['title']}")
        if record.url:
            try:
                _url(record.url)
            except ValidationError:
                errors.append(f"invalid URL: {record.url!r}")
            if len(record.url) > _ARTICLE_LIMITS["url"]:
                errors.append(f"URL too long: at most {_ARTICLE_LIMITS['url']} characters")
        if len(record.tags) > _ARTICLE_LIMITS["tags"]:
            errors.append(f"tags too long: at most {_ARTICLE_LIMITS['tags']} characters")
        if not record.body.strip():
            errors.append("no body: the article is empty")
        if errors:
            report.skip(record.where, "; ".join(errors))
            continue
        if title.lower() in seen:
            report.skip(record.where, f"duplicate: the same title as {seen[title.lower()]}")
            continue
        seen[title.lower()] = record.where
        before = KnowledgeArticle.objects.filter(tenant=tenant, title=title).values("url", "body", "tags").first()
        _, created = article_upsert(tenant=tenant, title=title, url=record.url, body=record.body, tags=record.tags)
        if created:
            report.created += 1
        elif before == {"url": record.url, "body": record.body, "tags": record.tags}:
            report.unchanged += 1
        else:
            report.updated += 1
    return report
