"""What makes two new tickets "the same problem": shared words, the same host or IP, or close meaning.

A ticket is reduced to a signature once (stemmed content words, subject words, hosts and IPs) and signatures are
compared pairwise; the cluster check compares a new ticket only with the tenant's recent tickets, so the cost does
not grow with the history.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from tickets.search import STOPWORDS, ips_in

# Words that say something is wrong but not what: they appear in every storm and in most background tickets.
GENERIC = frozenset(
    """down working work works error errors slow broken fail fails failed failing failure cannot unable connect
    connection connecting connected access accessing open opening load loading stopped stop stops keep keeps
    started start starts users user computer pc laptop everyone anybody nobody none office message showing shows
    appears appear happening happen happened wrong strange weird affected affect affects since minutes hour hours
    time times again keeps getting""".split()  # noqa: SIM905
)
GENERIC_WEIGHT = 0.25
SUBJECT_WEIGHT = 2.0
MAX_WORDS = 60
# A host-like token: letters and digits with a dash or dot and a digit (fw-01, srv-dc01.acme.local), the form
# inventory names take; plain words ("outlook") are not hosts.
_HOSTLIKE = re.compile(r"(?<![\w.-])(?=[A-Za-z0-9.-]*\d)(?=[A-Za-z0-9.-]*[A-Za-z])[A-Za-z0-9]+(?:[.-][A-Za-z0-9]+)+")
_WORD = re.compile(r"[^\W\d_]{2,40}", re.UNICODE)

TEXT_MATCH = 0.42  # weighted cosine of the words at or above which two tickets are about the same thing
# Cosine of two embeddings (tickets/embeddings.py) at or above which two tickets mean the same thing: on the labelled
# storm set, 0.72 keeps about 70% of same-storm pairs and under 2% of the other pairs of one tenant.
MEANING_MATCH = 0.72


def stem(word: str) -> str:
    """Return a crude English stem (enough to meet "printers"/"printer", "connecting"/"connected")."""
    for suffix in ("ions", "ion", "ing", "ed", "es", "s", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if len(word) > 4 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]  # "stopp" -> "stop"
    return word


def content_words(text: str, cap: int = MAX_WORDS) -> list[str]:
    """Return the distinct stemmed content words of text, in order (at most cap)."""
    out: dict[str, None] = {}
    for raw in _WORD.findall(text.lower()):
        if raw in STOPWORDS:
            continue
        out[stem(raw)] = None
        if len(out) >= cap:
            break
    return list(out)


def hosts_in(text: str) -> set[str]:
    """Return the IPs and host-like names written in text, lower-case (short names without their domain)."""
    found = set(ips_in(text))
    for token in _HOSTLIKE.findall(text):
        name = token.lower().rstrip(".")
        if name.replace(".", "").isdigit():
            continue  # a version or a partial IP, not a host
        found.add(name.split(".", 1)[0] if not name[0].isdigit() else name)
    return found


@dataclass
class Signature:
    """The comparable parts of one ticket."""

    words: list[str]
    subject_words: list[str]
    hosts: list[str] = field(default_factory=list)
    embedding: np.ndarray | None = None

    def to_json(self) -> dict:
        """Return the signature as stored on the cluster candidate row."""
        return {"w": self.words, "s": self.subject_words, "h": self.hosts}

    @classmethod
    def from_json(cls, data: dict, embedding: np.ndarray | None = None) -> Signature:
        """Return the signature stored by to_json."""
        return cls(
            words=data.get("w", []), subject_words=data.get("s", []), hosts=data.get("h", []), embedding=embedding
        )


def signature(subject: str, description: str, *, asset_names: Iterable[str] = ()) -> Signature:
    """Return the signature of a ticket's text and the inventory names its context matched."""
    subject_words = content_words(subject)
    words = list(dict.fromkeys([*subject_words, *content_words(description[:4000])]))[:MAX_WORDS]
    hosts = hosts_in(f"{subject}\n{description[:4000]}") | {n.lower().split(".", 1)[0] for n in asset_names if n}
    return Signature(words=words, subject_words=subject_words, hosts=sorted(hosts))


def _weights(sig: Signature) -> dict[str, float]:
    subject = set(sig.subject_words)
    weights = {}
    for word in sig.words:
        weight = GENERIC_WEIGHT if word in GENERIC else 1.0
        weights[word] = weight * (SUBJECT_WEIGHT if word in subject else 1.0)
    return weights


def text_similarity(a: Signature, b: Signature) -> float:
    """Return the weighted cosine of two tickets' words (0..1)."""
    wa, wb = _weights(a), _weights(b)
    if not wa or not wb:
        return 0.0
    dot = sum(wa[w] * wb[w] for w in wa.keys() & wb.keys())
    if not dot:
        return 0.0
    return dot / math.sqrt(sum(v * v for v in wa.values()) * sum(v * v for v in wb.values()))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape or not a.size:
        return 0.0
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm else 0.0


@dataclass(frozen=True)
class Match:
    """Why two tickets look like the same problem, and how strongly (0..1)."""

    score: float
    shared_hosts: tuple[str, ...] = ()
    shared_words: tuple[str, ...] = ()

    @property
    def same(self) -> bool:
        """Return whether the two tickets count as the same problem."""
        return self.score >= 1.0 or self.score >= TEXT_MATCH


def compare(a: Signature, b: Signature) -> Match:
    """Return how much two tickets look like the same problem."""
    hosts = tuple(sorted(set(a.hosts) & set(b.hosts)))
    words = tuple(sorted(set(a.words) & set(b.words)))
    if hosts:
        return Match(score=1.0, shared_hosts=hosts, shared_words=words)
    score = text_similarity(a, b)
    if a.embedding is not None and b.embedding is not None:
        meaning = _cosine(a.embedding, b.embedding)
        if meaning >= MEANING_MATCH:
            # Close meaning counts as a match even when the words differ ("VPN down" / "remote access broken").
            score = max(score, TEXT_MATCH + (meaning - MEANING_MATCH) * (1 - TEXT_MATCH) / (1 - MEANING_MATCH))
    return Match(score=min(score, 0.999), shared_words=words)
