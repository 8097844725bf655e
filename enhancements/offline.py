"""The offline note: what similar tickets' resolutions say, told apart into causes, actions and outcomes.

A resolution mixes what was wrong ("Old cached credentials after the password change."), what the technician did
("Removed every MicrosoftOffice16_Data entry, then signed out and back in.") and how it ended ("Outlook has stayed
connected since."). Only actions are next steps; causes become the probable causes, in words; outcomes are left
out. Actions from several similar tickets are merged when they say the same thing (embeddings, else shared words)
and ranked by how many similar tickets used them, then by how similar those tickets are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tickets import embeddings

MAX_STEPS = 5
MAX_CAUSES = 3
# An article is attached only at or above this article_find_relevant() score (it shares the ticket's rarest terms, in
# title or tags); below it a shared common word ("password", "VPN") brought it in. Calibrated on the labelled
# articles of tests/fixtures/retrieval (`manage.py retrieval_report --calibrate-articles`: the floor with the best
# F1 of attachment; docs/benchmarks.md has the figures); tests/test_offline_note.py checks the two agree.
ARTICLE_MIN_SCORE = 0.506
SAME_ACTION_COSINE = 0.8  # two action sentences at least this close say the same thing (local model)
SAME_ACTION_WORDS = 0.6  # the fallback without embeddings: share of shared content words

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|\n+|;\s+")
_THEN = re.compile(r",?\s+(?:and\s+)?then\s+", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)

# Outcomes: how it ended, what the user confirmed. Checked first: "Confirmed working after the reset" is one.
_OUTCOME = re.compile(
    r"\b(?:confirmed|confirms|working again|works again|now works|works now|is working|was working|"
    r"stayed|has stayed|remained|since then|no further|no more|back to normal|all good|resolved|fixed|"
    r"happy (?:for|to)|closing|closed the ticket|ticket closed|user (?:is )?happy|delivered|stable|"
    r"succeeded|successful|went through|opened fine|connected with no|no longer|now (?:shows|has|opens|prints|"
    r"connects|syncs|loads|free)|came back|all (?:jobs|users|mail))\b",
    re.IGNORECASE,
)
# Causes: a state that explains the symptom, not something done about it.
_CAUSE = re.compile(
    r"\b(?:caus(?:e|ed)|due to|because|turned out|root cause|was (?:not|set|missing|full|expired|disabled|"
    r"corrupt|blocked|locked|stale|wrong|left)|were (?:not|missing|stale|corrupt|blocked|left)|had (?:expired|"
    r"grown|filled|been|no|a|an)|expired|stale|corrupt(?:ed)?|leftover|left over|misconfigured|outdated|"
    r"was blocking|is blocking|did not resolve|not enabled|not registered|out of date|full|old|cached|legacy|"
    r"conflict(?:ing)?|duplicate|broke|forced|had\s+\w+|fragmentation|mismatch(?:ed)?)\b",
    re.IGNORECASE,
)
# Actions: a technician's verb, usually first (past tense in a resolution, imperative in a step).
_ACTIONS = {
    "added": "Add", "adjusted": "Adjust", "applied": "Apply", "assigned": "Assign", "changed": "Change",
    "checked": "Check", "cleaned": "Clean", "cleared": "Clear", "configured": "Configure", "connected": "Connect",
    "converted": "Convert", "created": "Create", "deleted": "Delete", "disabled": "Disable", "enabled": "Enable",
    "extended": "Extend", "flushed": "Flush", "forced": "Force", "freed": "Free", "granted": "Grant",
    "imported": "Import", "increased": "Increase", "installed": "Install", "issued": "Issue", "lowered": "Lower",
    "mapped": "Map", "moved": "Move", "opened": "Open", "patched": "Patch", "published": "Publish",
    "raised": "Raise", "rebooted": "Reboot", "rebuilt": "Rebuild", "recreated": "Recreate",
    "re-added": "Re-add", "re-enabled": "Re-enable", "re-enrolled": "Re-enrol", "re-registered": "Re-register",
    "registered": "Register", "reinstalled": "Reinstall", "removed": "Remove", "renewed": "Renew",
    "repaired": "Repair", "replaced": "Replace", "reset": "Reset", "resized": "Resize", "restarted": "Restart",
    "restored": "Restore", "rolled": "Roll", "ran": "Run", "reconnected": "Reconnect", "reseated": "Reseat",
    "set": "Set", "signed": "Sign", "started": "Start", "stopped": "Stop", "switched": "Switch", "synced": "Sync",
    "unlocked": "Unlock", "uninstalled": "Uninstall", "updated": "Update", "upgraded": "Upgrade",
    "walked": "Walk", "whitelisted": "Allow-list", "allowed": "Allow", "shared": "Share", "deployed": "Deploy",
    "rejoined": "Rejoin", "renamed": "Rename", "exported": "Export", "cancelled": "Cancel", "killed": "End",
    "emptied": "Empty", "archived": "Archive", "migrated": "Migrate", "reassigned": "Reassign",
    "retrieved": "Retrieve", "purged": "Purge", "suspended": "Suspend", "blocked": "Block", "relaunched": "Relaunch",
    "reverted": "Revert", "followed": "Follow", "asked": "Ask", "used": "Use", "edited": "Edit", "sent": "Send",
    "deregistered": "Deregister", "excluded": "Exclude", "scheduled": "Schedule", "verified": "Verify",
    "generated": "Generate", "uploaded": "Upload", "downloaded": "Download", "repointed": "Repoint",
}  # fmt: skip
# Imperative first words that are not also nouns a resolution starts with ("Sync completed", "Update failed").
_IMPERATIVES = {v.lower() for v in _ACTIONS.values()} - {
    "sync", "update", "change", "share", "patch", "export", "import", "issue", "raise", "map", "set", "free",
    "block", "test", "start", "open", "connect", "use", "edit", "schedule", "upload", "download",
}  # fmt: skip
_LEADING = re.compile(
    r"^(?:(?:on|in|from|for|with|at|via|after|then)\b[^,]{0,60}?\s+(?=(?:[a-z-]+ed|ran|set|reset|rebuilt|sent)\b)"
    r"|(?:on|in|from|for|with|at|via)\b[^,]{0,60},\s*|(?:also|we|i|tech|technician|then)\s+)",
    re.IGNORECASE,
)
_LATER_VERB = re.compile(r"(,\s*|\band\s+|\bthen\s+)([a-z-]+ed|ran|set|reset|rebuilt|sent)\b")


@dataclass
class Action:
    """One action of the merged list: its wording, the tickets that used it and their best score."""

    text: str
    tickets: list[str] = field(default_factory=list)
    best: float = 0.0


def _sentences(text: str) -> list[str]:
    parts = []
    for sentence in _SPLIT.split(" ".join(text.split()) if "\n" not in text else text):
        for part in _THEN.split(sentence):
            part = part.strip(" -•*\t")
            if len(part) > 3:
                parts.append(part)
    return parts


def _action_verb(sentence: str) -> str | None:
    words = _LEADING.sub("", sentence).split()
    word = words[0].lower().strip(",:;()") if words else ""
    if word in _ACTIONS or word in _IMPERATIVES:
        return word
    return None


def classify(sentence: str) -> str:
    """Return "action", "cause", "outcome" or "other" for one sentence of a resolution.

    An action starts with a technician's verb ("Removed ...", "On LT-0488 opened ..."); a sentence whose subject is
    the system ("Outlook connected with no further prompts", "Sync completed") reports an outcome or a state.
    """
    if _action_verb(sentence) and not re.match(r"\W*(?:confirmed|verified) (?:with|by|working)", sentence, re.I):
        return "action"
    if _OUTCOME.search(sentence):
        return "outcome"
    if _CAUSE.search(sentence):
        return "cause"
    return "other"


def resolution_parts(text: str) -> list[tuple[str, str]]:
    """Return (kind, sentence) for each sentence of a resolution, kind as classify() says."""
    return [(classify(s), s) for s in _sentences(text)]


def as_step(sentence: str) -> str:
    """Return an action sentence as a step: imperative first verb, capitalised, ending with a full stop."""
    sentence = _LEADING.sub("", sentence.strip())
    first, _, rest = sentence.partition(" ")
    imperative = _ACTIONS.get(first.lower().strip(","))
    if imperative:
        sentence = f"{imperative} {rest}".strip()

    def later(match: re.Match[str]) -> str:
        verb = match.group(2).lower()
        return match.group(1) + (_ACTIONS[verb].lower() if verb in _ACTIONS else match.group(2))

    sentence = _LATER_VERB.sub(later, sentence)
    sentence = sentence[:1].upper() + sentence[1:]
    return sentence if sentence.endswith((".", "!", "?")) else sentence + "."


def _content(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2}


def _vectors(texts: list[str]) -> np.ndarray | None:
    if not embeddings.current_model() or not texts:
        return None
    try:
        return embeddings.text_embed(texts)
    except embeddings.EmbeddingError:
        return None


def merge_actions(candidates: list[tuple[str, str, float]]) -> list[Action]:
    """Return the merged actions of (step, sdp id, ticket score) triples, the most used (then best) first."""
    vectors = _vectors([step for step, _, _ in candidates])
    merged: list[Action] = []
    anchors: list[int] = []  # index into candidates of each merged action's first wording
    for index, (step, sdp_id, score) in enumerate(candidates):
        same = None
        for position, anchor in enumerate(anchors):
            if vectors is not None:
                alike = float(vectors[index] @ vectors[anchor]) >= SAME_ACTION_COSINE
            else:
                a, b = _content(step), _content(candidates[anchor][0])
                alike = bool(a and b) and len(a & b) / min(len(a), len(b)) >= SAME_ACTION_WORDS
            if alike:
                same = merged[position]
                break
        if same is None:
            merged.append(Action(step, [sdp_id], score))
            anchors.append(index)
        else:
            if sdp_id not in same.tickets:
                same.tickets.append(sdp_id)
            same.best = max(same.best, score)
    merged.sort(key=lambda a: (-len(a.tickets), -a.best))
    return merged


def note_parts(similar: list[dict[str, Any]]) -> tuple[list[Action], list[tuple[str, list[str]]]]:
    """Return (ranked actions, probable causes with the tickets stating them) from similar tickets' resolutions."""
    actions: list[tuple[str, str, float]] = []
    causes: list[tuple[str, str, float]] = []
    for item in similar:
        score = float(item.get("score") or 0.0)
        for kind, sentence in resolution_parts(item.get("resolution") or ""):
            if kind == "action":
                actions.append((as_step(sentence), item["sdp_id"], score))
            elif kind == "cause":
                causes.append((sentence if sentence.endswith(".") else sentence + ".", item["sdp_id"], score))
    merged_causes = [(a.text, a.tickets) for a in merge_actions(causes)]
    return merge_actions(actions), merged_causes
