"""Text embeddings for the similar-ticket search: one interface, providers chosen by settings.

- `local` (the default): WordLlama's static 256-dimension model, whose weights and tokenizer ship inside the
  `wordllama` wheel. Its loader looks for the tokenizer under a cache folder and otherwise downloads it, so it
  is loaded with the installed package's own folder as the cache and downloads disabled: no network, ever.
- `openai`: any OpenAI-compatible `POST /v1/embeddings` (OpenAI, Ollama, vLLM), with its own model, base URL
  and key (EMBEDDINGS_*; the URL and key default to the LLM's).
- `off`: no embeddings; the search is lexical only.

`text_embed()` is the public entry point (L2-normalised float32 rows). A ticket stores its vector quantised to
int8 (`vector_pack`), the model name and dimension, and a sign-bit code for a Hamming prefilter (`vector_code`).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from django.conf import settings

log = logging.getLogger(__name__)

MAX_CHARS = 2000  # what one ticket contributes: its subject and the start of its description
OPENAI_BATCH = 128
# "-nolang": the token vectors without the directions that tell languages apart (_language_free). Another name
# than the stored one re-embeds (reembed_tickets, the sweep), so any change to what a vector means renames it.
LOCAL_MODEL = "wordllama-l2_supercat-256-nolang"
# The languages whose identity is projected out of the local model: those language.NAMES shows that the
# stop-words package has a list for (not Norwegian).
LANGUAGE_FREE = ("en", "de", "fr", "es", "nl", "it", "pt", "pl", "sv", "da", "fi", "cs", "tr")
OPENAI_DEFAULT_MODEL = "text-embedding-3-small"
CACHE_WORDS = 200_000  # distinct words whose tokens a process keeps (a few tens of MB at most)
_WORD = re.compile("▁*[^▁]+|▁+")  # a word with the "▁"s before it (SentencePiece's space)
_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


class EmbeddingError(Exception):
    """Embedding failed; `permanent` says whether retrying can help (bad key, unknown model) or not."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Provider(Protocol):
    """Turns texts into L2-normalised float32 vectors of one model."""

    model: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return one normalised row per text."""
        ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return vectors / norms


class LocalProvider:
    """WordLlama's static model from the files inside the installed wheel (no download, no network)."""

    model = LOCAL_MODEL

    def __init__(self, *, language_free: bool = True) -> None:
        import json

        import wordllama
        from tokenizers import Tokenizer
        from wordllama import WordLlama

        # The wheel holds weights/ and tokenizers/ in the package folder: use it as the cache, never download.
        wl = WordLlama.load(
            config="l2_supercat", dim=256, cache_dir=Path(wordllama.__file__).parent, disable_download=True
        )
        self._tokenizer = Tokenizer.from_str(wl.tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        # The same tokenizer without its normaliser (which only prepends "▁" and turns spaces into "▁"), for
        # the words of a text: see _ids().
        config = json.loads(wl.tokenizer.to_str())
        config["normalizer"] = None
        self._words = Tokenizer.from_str(json.dumps(config))
        self._words.no_padding()
        self._words.no_truncation()
        self._cache: dict[str, list[int]] = {}
        matrix = np.asarray(wl.embedding, dtype=np.float32)
        if language_free:  # what LOCAL_MODEL names; without, the wheel's model as it is (bench/semantic_quality.py)
            matrix = _language_free(matrix, self._word_ids)
        else:
            self.model = LOCAL_MODEL.removesuffix("-nolang")
        # One zero row past the vocabulary: padding points there and adds nothing to a sum.
        self._matrix = np.vstack([matrix, np.zeros((1, matrix.shape[1]), dtype=np.float32)])
        self._pad = self._matrix.shape[0] - 1

    def _word_ids(self, word: str) -> list[int]:
        return list(self._words.encode("▁" + word, add_special_tokens=False).ids)

    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Return the token ids of each text, as the model's tokenizer gives them, a cached word at a time.

        The tokenizer (SentencePiece-style BPE, no pre-tokenizer) works on the whole text; no token of its
        vocabulary holds a "▁" after another character, so no token spans the start of a word and the text's
        tokens are its words' tokens one after another. Tickets reuse the same few thousand words, so each
        distinct word is tokenized once per process (tests/test_embeddings.py checks the ids are the same).
        """
        cache = self._cache
        if len(cache) > CACHE_WORDS:
            cache.clear()
        split: list[list[str] | None] = []
        unseen: dict[str, None] = {}
        whole: list[int] = []
        for index, text in enumerate(texts):
            if not text or ("<" in text and any(token in text for token in _SPECIAL_TOKENS)):
                split.append(None)  # special tokens are matched before normalisation: the tokenizer decides
                whole.append(index)
                continue
            words = _WORD.findall("▁" + text.replace(" ", "▁"))
            split.append(words)
            for word in words:
                if word not in cache:
                    unseen[word] = None
        if unseen:
            news = list(unseen)
            for word, encoding in zip(news, self._words.encode_batch(news, add_special_tokens=False), strict=True):
                cache[word] = list(encoding.ids)
        out: list[list[int]] = []
        for segments in split:
            ids: list[int] = []
            for segment in segments or ():
                ids += cache[segment]
            out.append(ids)
        if whole:
            encoded = self._tokenizer.encode_batch([texts[i] for i in whole], add_special_tokens=False)
            for index, encoding in zip(whole, encoded, strict=True):
                out[index] = encoding.ids
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return one normalised 256-dimension row per text (the mean of its token vectors)."""
        out = np.zeros((len(texts), self._matrix.shape[1]), dtype=np.float32)
        if not texts:
            return out
        encoded = self._ids([t[:MAX_CHARS] for t in texts])
        # Texts batched by length (a ticket history mixes one-liners with pasted logs: little padding), each
        # padded with the zero row past the vocabulary, which adds nothing to a sum.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), 64):
            chunk = order[start : start + 64]
            width = max(1, len(encoded[chunk[-1]]))
            ids = np.full((len(chunk), width), self._pad, dtype=np.int64)
            for row, index in enumerate(chunk):
                tokens = encoded[index]
                ids[row, : len(tokens)] = tokens
            lengths = np.array([max(1, len(encoded[i])) for i in chunk], dtype=np.float32)
            out[chunk] = self._matrix[ids].sum(axis=1) / lengths[:, None]
        return _normalise(out)


def _language_free(matrix: np.ndarray, word_ids: Any) -> np.ndarray:
    """Return the token vectors with the directions that tell languages apart projected out.

    A text's vector is the mean of its tokens' vectors, so a German ticket's carries, besides what it is about,
    what every German text shares: the direction of German function words, which an English past ticket lacks
    (cross-language cosines of the same problem were about 0.27 against 0.73 within English). Each language's
    direction is the mean vector of its stop words (pure language, no topic) less the vocabulary's mean; the
    LANGUAGE_FREE directions span a small subspace (13 of 256 dimensions) that is removed from every token
    vector, for tickets and queries alike, whatever their language. Measured by bench/semantic_quality.py:
    cross-language recall@5 0.48 -> 0.55, English unchanged (0.956 original, 0.76 paraphrased).
    """
    from stop_words import get_stop_words

    mean = matrix.mean(axis=0)
    directions = []
    for language in LANGUAGE_FREE:
        ids = [i for word in get_stop_words(language) for i in word_ids(word)]
        directions.append(matrix[ids].mean(axis=0) - mean)
    basis, _ = np.linalg.qr(np.array(directions, dtype=np.float64).T)
    # In place, a block of rows at a time, in float32: the whole-matrix float64 products peaked at +157 MB per
    # process while the model loaded, which a 768 MB worker container with two processes loading at once (a
    # recycled worker's successor) could not hold: the kernel killed one, and Django-Q's task queue deadlocked.
    projected = np.array(matrix, dtype=np.float32)
    basis32 = basis.astype(np.float32)
    for start in range(0, len(projected), 4096):
        block = projected[start : start + 4096]
        block -= (block @ basis32) @ basis32.T
    return projected


class OpenAIProvider:
    """Any OpenAI-compatible `/v1/embeddings` endpoint."""

    def __init__(self, *, model: str, base_url: str | None, api_key: str, timeout: float) -> None:
        import openai

        self.model = model
        self._openai = openai
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key or "unused", timeout=timeout, max_retries=2)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return one normalised row per text; raise EmbeddingError on a failed call."""
        rows: list[list[float]] = []
        for start in range(0, len(texts), OPENAI_BATCH):
            batch = [t[:MAX_CHARS] or " " for t in texts[start : start + OPENAI_BATCH]]
            try:
                answer = self._client.embeddings.create(model=self.model, input=batch, encoding_format="float")
            except self._openai.APIStatusError as exc:
                permanent = exc.status_code in (400, 401, 403, 404)
                raise EmbeddingError(f"embeddings endpoint answered {exc.status_code}", permanent=permanent) from exc
            except self._openai.APIError as exc:
                raise EmbeddingError(f"embeddings endpoint failed: {exc.__class__.__name__}") from exc
            data = sorted(answer.data, key=lambda item: item.index)
            if len(data) != len(batch):
                raise EmbeddingError(f"embeddings endpoint returned {len(data)} vectors for {len(batch)} texts")
            rows.extend(item.embedding for item in data)
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return _normalise(np.array(rows, dtype=np.float32))


_lock = threading.Lock()
_providers: dict[tuple[Any, ...], Provider] = {}


def _provider_key() -> tuple[Any, ...]:
    kind = settings.EMBEDDINGS_PROVIDER
    if kind == "openai":
        return (
            kind,
            settings.EMBEDDINGS_MODEL or OPENAI_DEFAULT_MODEL,
            settings.EMBEDDINGS_BASE_URL or settings.OPENAI_BASE_URL,
            settings.EMBEDDINGS_API_KEY or settings.OPENAI_API_KEY,
            settings.EMBEDDINGS_TIMEOUT or settings.LLM_TIMEOUT,
        )
    return (kind,)


def provider() -> Provider | None:
    """Return the configured provider (one per process, loaded on first use), or None when embeddings are off."""
    key = _provider_key()
    if key[0] == "off":
        return None
    with _lock:
        found = _providers.get(key)
        if found is None:
            if key[0] == "openai":
                found = OpenAIProvider(model=key[1], base_url=key[2], api_key=key[3], timeout=key[4])
            else:
                found = LocalProvider()
            _providers[key] = found
        return found


def current_model() -> str:
    """Return the name of the model the configured provider embeds with ("" when embeddings are off)."""
    kind = settings.EMBEDDINGS_PROVIDER
    if kind == "off":
        return ""
    if kind == "openai":
        return settings.EMBEDDINGS_MODEL or OPENAI_DEFAULT_MODEL
    return LOCAL_MODEL


def text_embed(texts: Sequence[str]) -> np.ndarray:
    """Return the L2-normalised float32 embeddings of texts (one row each) with the configured provider.

    Raises EmbeddingError when the provider fails, ValueError when embeddings are off.
    """
    found = provider()
    if found is None:
        raise ValueError("embeddings are off (EMBEDDINGS_PROVIDER=off)")
    return found.embed(list(texts))


# --- storage ----------------------------------------------------------------------------------------------------
def vector_pack(vector: np.ndarray) -> bytes:
    """Return a normalised vector quantised to int8 (1 byte per dimension; cosine error well under 1%)."""
    return np.clip(np.rint(vector * 127.0), -127, 127).astype(np.int8).tobytes()


def vector_unpack(blob: bytes | memoryview) -> np.ndarray:
    """Return the float32 vector of a packed one (not re-normalised: the scale is the same for every row)."""
    return np.frombuffer(bytes(blob), dtype=np.int8).astype(np.float32) / 127.0


def vectors_unpack(blobs: Iterable[bytes | memoryview], dim: int) -> np.ndarray:
    """Return a matrix of packed vectors of one dimension (rows of another length are zero)."""
    data = [bytes(b) for b in blobs]
    joined = b"".join(b if len(b) == dim else bytes(dim) for b in data)
    return np.frombuffer(joined, dtype=np.int8).reshape(len(data), dim).astype(np.float32) / 127.0


def vector_code(vector: np.ndarray) -> bytes:
    """Return the sign bits of the vector (dimension / 8 bytes): Hamming distance approximates the angle."""
    return np.packbits(np.asarray(vector) > 0).tobytes()


@dataclass(frozen=True)
class Embedded:
    """What a ticket stores about its embedding."""

    vector: bytes
    code: bytes
    model: str
    dim: int

    def fields(self) -> dict[str, Any]:
        """Return the Ticket field values."""
        return {
            "embedding": self.vector,
            "embedding_code": self.code,
            "embedding_model": self.model,
            "embedding_dim": self.dim,
        }


def embed_texts(texts: Sequence[str]) -> list[Embedded]:
    """Return what each text's ticket stores (empty when embeddings are off); raise EmbeddingError."""
    found = provider()
    if found is None or not texts:
        return []
    vectors = found.embed(list(texts))
    if not len(vectors):
        return []
    # vector_pack and vector_code of every row at once.
    packed = np.clip(np.rint(vectors * 127.0), -127, 127).astype(np.int8)
    codes = np.packbits(vectors > 0, axis=1)
    dim = int(vectors.shape[1])
    return [Embedded(p.tobytes(), c.tobytes(), found.model, dim) for p, c in zip(packed, codes, strict=True)]


def ticket_embedding_text(subject: str, description: str) -> str:
    """Return the text a ticket is embedded by: what a new ticket says (its subject and description)."""
    return f"{subject}\n{description}".strip()
