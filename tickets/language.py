"""Language detection for tickets (py3langid: a maintained fork of langid.py, its model inside the wheel)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_CONFIDENCE = 0.5  # below it (a two-word subject, a pasted log) the language is left unknown
_lock = threading.Lock()
_identifier: Any = None
_tables: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

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
    global _identifier, _tables
    with _lock:
        if _identifier is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
            # The byte automaton that finds the model's features, as arrays (texts_language walks it for a batch).
            _tables = (
                np.frombuffer(identifier.tk_nextmove, dtype=np.uint32),  # a view of the model's own array
                np.asarray(identifier._rowbase, dtype=np.int64),
                np.asarray(identifier.tk_output, dtype=np.int32),
            )
            _identifier = identifier
        return _identifier


def _sample(text: str) -> str:
    return " ".join(text[:600].split())[:200]  # a subject and a sentence tell the language


def text_language(text: str) -> str:
    """Return the ISO 639-1 code of the text's language, or "" when it cannot be told with confidence."""
    text = _sample(text)
    if len(text) < 8:
        return ""
    code, confidence = _get().classify(text)
    return str(code) if confidence >= MIN_CONFIDENCE else ""


def texts_language(texts: Sequence[str]) -> list[str]:
    """Return text_language() of each text, computed for the whole batch at once (an import page).

    The same model and decision as py3langid's classify(): its byte automaton is walked one byte position at a
    time for every text together (numpy), each text's feature counts are scored against the model's table, and
    the normalised probabilities decide (tests/test_embeddings.py checks the answers are classify()'s).
    """
    identifier = _get()
    assert _tables is not None
    nextmove, rowbase, output = _tables
    out = [""] * len(texts)
    todo = [(index, sample) for index, text in enumerate(texts) if len(sample := _sample(text)) >= 8]
    if not todo:
        return out
    encoded = [identifier._encode(sample) for _, sample in todo]
    lengths = np.array([len(data) for data in encoded], dtype=np.int64)
    data = np.zeros((len(encoded), int(lengths.max())), dtype=np.int64)  # the bytes, one row per text
    for row, raw in enumerate(encoded):
        data[row, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    state = np.zeros(len(encoded), dtype=np.int64)
    features = np.empty(data.shape, dtype=np.int64)
    for column in range(data.shape[1]):
        state = nextmove[rowbase[state] + data[:, column]]
        features[:, column] = output[state]
    features[np.arange(data.shape[1])[None, :] >= lengths[:, None]] = -1  # past a text's end
    rows, columns = np.nonzero(features >= 0)
    width = identifier.nb_ptc.shape[0]
    keys, counts = np.unique(rows * width + features[rows, columns], return_counts=True)
    bounds = np.searchsorted(keys // width, np.arange(len(encoded) + 1))
    scores = np.zeros((len(encoded), len(identifier.nb_classes)), dtype=np.float32)
    for row in range(len(encoded)):
        start, stop = bounds[row], bounds[row + 1]
        if stop > start:  # a text without any feature stays uniform, as in classify()
            weights = np.log1p(counts[start:stop].astype(np.float32))
            scores[row] = weights @ identifier.nb_ptc[keys[start:stop] % width] + identifier.nb_pc
    scores *= (1.0 / np.sqrt(np.maximum(lengths, 1))).astype(np.float32)[:, None]
    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
    scores /= scores.sum(axis=1, keepdims=True)
    for first, alias in identifier._alias_pairs:
        scores[:, first] += scores[:, alias]
        scores[:, alias] = 0.0
    best = scores.argmax(axis=1)
    for (index, _), column, confidence in zip(todo, best, scores[np.arange(len(best)), best], strict=True):
        if confidence >= MIN_CONFIDENCE:
            out[index] = str(identifier.nb_classes[int(column)])
    return out


def language_name(code: str) -> str:
    """Return the English name of a language code (the code itself when unlisted, "unknown" when empty)."""
    return NAMES.get(code, code) if code else "unknown"
