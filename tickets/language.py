"""Language detection for tickets (py3langid: a maintained fork of langid.py, its model inside the wheel)."""

from __future__ import annotations

import threading
from typing import Any

MIN_CONFIDENCE = 0.5  # below it (a two-word subject, a pasted log) the language is left unknown
_lock = threading.Lock()
_identifier: Any = None

# The names technicians read in the note and the admin (ISO 639-1 codes are stored).
NAMES = {
    "en": "English",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "nl": "Dutch",
    "it": "Italian",
    "pt": "Portuguese",
    "pl": "Polish",
    "sv": "Swedish",
    "da": "Danish",
    "no": "Norwegian",
    "fi": "Finnish",
    "cs": "Czech",
    "tr": "Turkish",
}


def _get() -> Any:
    global _identifier
    with _lock:
        if _identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return _identifier


def text_language(text: str) -> str:
    """Return the ISO 639-1 code of the text's language, or "" when it cannot be told with confidence."""
    text = " ".join(text[:600].split())[:200]  # a subject and a sentence tell the language
    if len(text) < 8:
        return ""
    code, confidence = _get().classify(text)
    return str(code) if confidence >= MIN_CONFIDENCE else ""


def language_name(code: str) -> str:
    """Return the English name of a language code (the code itself when unlisted, "unknown" when empty)."""
    return NAMES.get(code, code) if code else "unknown"
