"""Urgency cues from a ticket's words and requester: business impact, frustration, a repeated problem, a VIP.

Offline they come from rules and the VADER sentiment lexicon (vaderSentiment), with the words of IT problems
("error", "fails", "broken", "down") made neutral: VADER scores them as strongly negative, yet they say what is wrong
with a machine, not how the requester feels. With an LLM, business impact and frustration come from its structured
output; the repeated problem and the VIP flag come from our data either way.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from clusters.similarity import signature, text_similarity
from tickets.models import Tenant, Ticket

REPEAT_WINDOW = timedelta(days=30)
REPEAT_SIMILARITY = 0.4
PRIORITIES = ["Low", "Medium", "High", "Urgent"]
LABELS = {
    "business_impact": "Business impact",
    "frustration": "Frustrated requester",
    "repeated": "Repeated problem",
    "vip": "VIP",
}
WEIGHTS = {"business_impact": 2, "frustration": 1, "repeated": 1, "vip": 1}

# The LLM's part of the structured output (enhancements.llm.OUTPUT_SCHEMA["properties"]["urgency"]).
LLM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["business_impact", "frustration", "evidence"],
    "properties": {
        "business_impact": {
            "type": "boolean",
            "description": "The ticket says work or business is stopped or many people are affected.",
        },
        "frustration": {"type": "boolean", "description": "The requester sounds frustrated or angry."},
        "evidence": {"type": "string", "description": "The requester's words that show it, quoted briefly."},
    },
}

_IMPACT = [
    r"\b(nobody|no one|no-one|none of us) (here )?(can|is able to|could) (work|log ?in|print|do anything)",
    r"\b(can ?not|can't|cannot|unable to) (do any|get any) work\b",
    r"\b(we|they|the team|everyone|staff|users) (can ?not|can't|cannot) work\b",
    r"\b(whole|entire|all of the|the full) "
    r"(office|team|company|building|floor|branch|site|department|shop|store|warehouse)",
    r"\b(all|every) (users|staff|employees|colleagues|stores|shops|tills|branches|sites|agents|machines|pcs)\b",
    r"\beveryone (here |in the \w+ )?(is|has|can|cannot|can't)\b",
    r"\bproduction (is |has gone |went )?(down|stopped|halted|offline)\b",
    r"\b(line|plant|factory|site|shop|store|website|webshop|checkout|tills?|pos) (is |are )?(down|offline|stopped)\b",
    r"\b(losing|lose|lost) (money|revenue|sales|orders|customers|business)\b",
    r"\b(customers|clients|patients|callers) (can ?not|can't|cannot|are unable to|are waiting)\b",
    r"\b(can ?not|can't|cannot|unable to) (take|process|ship|invoice) (orders|payments|calls|customers)\b",
    r"\b\d{2,}\+? (users|people|staff|employees|colleagues|of us)\b",
    r"\b(business[- ]critical|mission[- ]critical|critical outage|major outage|complete outage|total outage)\b",
    r"\bpayroll\b.*\b(today|tonight|deadline|due)\b|\b(deadline|due) (is )?(today|tonight|in an hour)\b",
    r"\bat a (complete )?standstill\b|\bground(ed|s) to a halt\b|\bhalted\b",
]
_NOT_IMPACT = [
    r"\bonly (me|my|affects me|for me)\b",
    r"\bno rush\b|\bnot urgent\b|\bwhen you (have|get) (a )?(time|chance|minute)\b|\blow priority\b",
]
_FRUSTRATION = [
    r"\b(third|fourth|fifth|3rd|4th|5th|\d+(st|nd|rd|th)?) time\b",
    r"\b(again|still)\b.{0,40}\b(not|never) (fixed|working|resolved|sorted)\b",
    r"\bhow many times\b",
    r"\b(fed up|sick (and tired )?of|had enough|at my wits'? end|beyond frustrat\w*)\b",
    r"\b(unacceptable|ridiculous|absurd|outrageous|pathetic|useless|a joke|disgrace\w*)\b",
    r"\b(frustrat\w+|furious|angry|annoyed|livid|infuriat\w+|exasperat\w+)\b",
    r"\b(nobody|no one) (has )?(answer\w*|respond\w*|repl\w+|call\w* me back|got back)\b",
    r"\b(waiting|waited) (for )?(days|weeks|\d+ (days|hours))\b",
    r"\bwaste of (my )?time\b",
]
# IT problem words that VADER reads as emotion.
_TECHNICAL = """error errors fail fails failed failing failure broken break breaks crash crashed crashes crashing
problem problems issue issues lost lose loss stuck down wrong slow bug bugs block blocked blocks denied deny kill
killed dead freeze frozen hang hangs hung miss missing missed delay delayed disconnect disconnected warning virus
attack spam junk critical urgent bad trouble troubles unable cannot poor weak strange weird odd lag drop dropped drops
low offline outage attacked alert alarm emergency suspicious fault faulty damage damaged leak leaking reject
rejected""".split()  # noqa: SIM905


@functools.cache
def _analyzer() -> SentimentIntensityAnalyzer:
    analyzer = SentimentIntensityAnalyzer()
    for word in _TECHNICAL:
        analyzer.lexicon.pop(word, None)  # neutral: a fact about the machine, not the requester's mood
    return analyzer


def _first(patterns: list[str], text: str) -> str:
    for pattern in patterns:
        match = re.search(pattern, text, flags=re.IGNORECASE)
        if match:
            return match.group(0)
    return ""


def _snippet(text: str, found: str, width: int = 60) -> str:
    at = text.lower().find(found.lower())
    if at < 0:
        return found
    start, end = max(0, at - 20), min(len(text), at + len(found) + width - 20)
    return ("…" if start else "") + " ".join(text[start:end].split()) + ("…" if end < len(text) else "")


def business_impact(text: str) -> str:
    """Return the words that show business impact, or ""."""
    if _first(_NOT_IMPACT, text):
        return ""
    found = _first(_IMPACT, text)
    return _snippet(text, found) if found else ""


def frustration(text: str) -> str:
    """Return the words that show frustration or anger, or ""."""
    found = _first(_FRUSTRATION, text)
    if found:
        return _snippet(text, found)
    scores = _analyzer().polarity_scores(text)
    shouting = len(re.findall(r"!{2,}|\b[A-Z]{4,}\b", text))
    if scores["compound"] <= -0.6 or (scores["compound"] <= -0.3 and shouting):
        emotional = [w for w in re.findall(r"[a-z']+", text.lower()) if _analyzer().lexicon.get(w, 0) <= -1.5]
        if emotional:
            return _snippet(text, emotional[0])
    return ""


def _vip_list(tenant: Tenant) -> set[str]:
    return {line.strip().lower() for line in (tenant.vip_requesters or "").splitlines() if line.strip()}


def vip(ticket: Ticket) -> str:
    """Return why the requester is a VIP (the tenant's list, or SDP's own VIP flag), or ""."""
    names = _vip_list(ticket.tenant)
    email, name = (ticket.requester_email or "").lower(), (ticket.requester_name or "").lower()
    if (email and email in names) or (name and name in names):
        return f"{ticket.requester_name or ticket.requester_email} is on the tenant's VIP list"
    requester = (ticket.raw or {}).get("requester") if isinstance(ticket.raw, dict) else None
    if isinstance(requester, dict) and requester.get("is_vipuser") in (True, "true"):
        return f"{ticket.requester_name or 'The requester'} is a VIP user in SDP"
    return ""


def repeated(ticket: Ticket) -> tuple[str, str]:
    """Return (earlier ticket's SDP id, evidence) when the requester reported the same problem within 30 days."""
    email = ticket.requester_email
    if not email:
        return "", ""
    moment = ticket.sdp_created_at or ticket.created_at or timezone.now()
    since = moment - REPEAT_WINDOW
    earlier = (
        Ticket.objects.filter(tenant=ticket.tenant, requester_email=email)
        .filter(
            Q(sdp_created_at__gte=since, sdp_created_at__lt=moment)
            | Q(sdp_created_at__isnull=True, created_at__gte=since)
        )
        .exclude(pk=ticket.pk)
        .only("sdp_id", "subject", "description", "sdp_created_at", "created_at")
        .order_by("-created_at")[:50]
    )
    mine = signature(ticket.subject, ticket.description)
    best: tuple[float, Ticket | None] = (0.0, None)
    for other in earlier:
        score = text_similarity(mine, signature(other.subject, other.description))
        if score > best[0]:
            best = (score, other)
    score, match = best
    if match is None or score < REPEAT_SIMILARITY:
        return "", ""
    when = match.sdp_created_at or match.created_at
    days = max(0, (moment - when).days) if when else 0
    return match.sdp_id, f"#{match.sdp_id} “{match.subject[:80]}”, {days} days earlier"


@dataclass(frozen=True)
class Cue:
    """One urgency cue: its kind, the badge text and the evidence."""

    kind: str
    evidence: str
    ticket: str = ""  # the earlier ticket, for "repeated"

    def to_json(self) -> dict[str, str]:
        """Return the cue as stored on the enhancement."""
        data = {"kind": self.kind, "label": LABELS[self.kind], "evidence": self.evidence}
        if self.ticket:
            data["ticket"] = self.ticket
        return data


def cues_from_rules(ticket: Ticket) -> list[Cue]:
    """Return every cue the rules and the lexicon find, plus the data cues."""
    text = f"{ticket.subject}\n{ticket.description}"
    found = []
    if evidence := business_impact(text):
        found.append(Cue("business_impact", evidence))
    if evidence := frustration(text):
        found.append(Cue("frustration", evidence))
    return [*found, *cues_from_data(ticket)]


def cues_from_data(ticket: Ticket) -> list[Cue]:
    """Return the cues our data decides: a repeated problem and a VIP requester."""
    found = []
    earlier, evidence = repeated(ticket)
    if earlier:
        found.append(Cue("repeated", evidence, ticket=earlier))
    if evidence := vip(ticket):
        found.append(Cue("vip", evidence))
    return found


def cues_with_llm(rule_cues: list[dict[str, str]], llm: dict[str, Any] | None) -> list[dict[str, str]]:
    """Return the cues after the LLM's judgement of impact and frustration (rules' data cues kept)."""
    if not isinstance(llm, dict):
        return rule_cues
    kept = [c for c in rule_cues if c["kind"] in ("repeated", "vip")]
    evidence = str(llm.get("evidence") or "")[:200]
    judged = [
        Cue(kind, evidence or "the LLM's reading").to_json()
        for kind in ("business_impact", "frustration")
        if llm.get(kind) is True
    ]
    return judged + kept


def priority_with_urgency(current: str, cues: list[dict[str, str]]) -> tuple[str, str]:
    """Return the priority suggestion raised by the cues (never lowered) and why, or (current, "")."""
    points = sum(WEIGHTS.get(c["kind"], 0) for c in cues)
    floor = "Urgent" if points >= 3 else "High" if points >= 2 else "Medium" if points >= 1 else ""
    if not floor:
        return current, ""
    rank = PRIORITIES.index(current) if current in PRIORITIES else -1
    if PRIORITIES.index(floor) <= rank:
        return current, ""
    return floor, "raised by " + ", ".join(LABELS[c["kind"]].lower() for c in cues)
