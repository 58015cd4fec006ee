"""A model-free embedder: signed feature hashing of words and word pairs.

It needs no download and no GPU, so it is the default backend, the one tests run on, and
the fallback on small machines. Each word (lowercased, NFKC, simple plurals made
singular, stop words dropped) and each pair of neighbouring words is hashed with
blake2b into one of `dim` buckets with a sign; bucket values are summed with sublinear
term frequency and the row is scaled to unit length, so cosine similarity ranks texts by
shared vocabulary. Hashes are computed from UTF-8 bytes, never with the builtin hash(),
so a vector is the same in every process and Python version: it is stored and compared
later. Any change to the features must change `model_id`.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from .base import Embedder, check_texts

#: default vector length, in components (1024)
DEFAULT_DIM = 1024
#: smallest vector length accepted, in components (64)
MIN_DIM = 64
#: weight of a word-pair feature, relative to a single word (0.5)
BIGRAM_WEIGHT = 0.5
#: size at which the token -> hash cache is emptied, in entries (200_000)
CACHE_ENTRIES = 200_000
#: texts hashed together in one numpy pass, in texts (1024); must stay below 2**16
BATCH_TEXTS = 1024

#: version tag of the feature scheme, part of `model_id` ("hashing-v1")
SCHEME = "hashing-v1"

# Letters and digits of any script; \w without "_" so snake_case splits into words.
_TOKEN = re.compile(r"[^\W_]+")
# The same rule for ASCII text, as one bytes.translate: lowercase letters and digits are
# kept, everything else becomes a space; several times faster than the regex.
_ASCII_WORDS = bytes(
    ord(chr(b).lower()) if chr(b).isalnum() else ord(" ") for b in range(128)
) + b" " * 128
# Function words carry no topic and would dominate every vector. The one-letter and
# two-letter entries are the remains of contractions ("patient's", "don't").
_STOP_WORDS = frozenset(
    """
    a an the and or but nor if then else of in on at to for from by with without about
    as into onto than so such is are was were be been being am do does did done has have
    had having it its this that these those there here which who whom whose what when
    where why how not no can could may might must shall should will would i me my we us
    our you your he him his she her they them their also very all any each other some
    only own same too just both few more most once out over under up down off again
    after before between through during above below while because until against s t d
    ll m re ve
    """.split()
)
_PERSON = b"roxi-hashing-v1"  # blake2b personalisation: these hashes are ours alone

# 64-bit mixing constants (MurmurHash3 finaliser, golden ratio); numpy uint64 arithmetic
# wraps modulo 2**64 on every platform, which keeps word-pair hashes stable.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_SHIFT33 = np.uint64(33)
# A (text, feature) pair is packed in one uint64 so np.unique can count term frequency:
# the row in the top 16 bits, the top 48 bits of the feature hash below.
_ROW_SHIFT = np.uint64(48)
_FEATURE_DROP = np.uint64(16)
_FEATURE_MASK = np.uint64((1 << 48) - 1)
_ONE = np.uint64(1)


def singular(word: str) -> str:
    """`word` with a simple English plural removed: crystals -> crystal, arteries -> artery.

    Short words and endings that are rarely plurals (glass, virus, arthritis) are left as
    they are; the rule only has to map both forms to the same feature, not to real words.
    """
    if len(word) <= 3 or word[-1] != "s" or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes")):
        return word[:-2]
    return word[:-1]


def tokenize(text: str) -> list[str]:
    """The word features of `text`, in order: what `HashingEmbedder` hashes."""
    words = _TOKEN.findall(_prepare(text))
    return [singular(w) for w in words if w not in _STOP_WORDS]


def _prepare(text: str) -> str:
    # NFKC makes composed and decomposed accents, ligatures and full-width forms equal.
    return unicodedata.normalize("NFKC", text).lower()


def _raw_tokens(text: str) -> list[bytes]:
    """Lowercased tokens of `text` as UTF-8 bytes, before stop words and plurals."""
    if text.isascii():
        # NFKC and lower() leave ASCII as ASCII, so both paths give the same tokens.
        return text.encode("ascii").translate(_ASCII_WORDS).split()
    return [_utf8(t) for t in _TOKEN.findall(_prepare(text))]


def _utf8(word: str) -> bytes:
    return word.encode("utf-8", "surrogatepass")  # lone surrogates from bad decodes


def _word_hash(word: str) -> int:
    digest = hashlib.blake2b(_utf8(word), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "little")


def _fmix64(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> _SHIFT33)
    x = x * _MIX1
    x = x ^ (x >> _SHIFT33)
    x = x * _MIX2
    return x ^ (x >> _SHIFT33)


class HashingEmbedder(Embedder):
    """Deterministic feature-hashing embedder; `model_id` is "hashing-v1-<dim>"."""

    def __init__(self, *, dim: int = DEFAULT_DIM) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < MIN_DIM:
            raise ConfigError(f"embedder dim must be an integer >= {MIN_DIM}, got {dim!r}")
        self.dim = dim
        self.model_id = f"{SCHEME}-{dim}"
        # Raw lowercased UTF-8 token -> hash of its feature word, or -1 for a stop word:
        # most tokens repeat, so hashing and plural rules run once per distinct token.
        self._cache: dict[bytes, int] | None = None

    def load(self) -> None:
        if self._cache is None:
            self._cache = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        self.load()  # the token cache is this backend's whole "model": rebuilt lazily
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for lo in range(0, len(texts), BATCH_TEXTS):
            batch = texts[lo : lo + BATCH_TEXTS]
            out[lo : lo + len(batch)] = self._encode_batch(batch)
        return out

    def unload(self) -> None:
        self._cache = None

    @property
    def loaded(self) -> bool:
        return self._cache is not None

    def _encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        n = len(texts)
        per_text = [self._hashes(text) for text in texts]
        lengths = np.fromiter(map(len, per_text), dtype=np.int64, count=n)
        words = np.fromiter(
            itertools.chain.from_iterable(per_text), dtype=np.uint64, count=int(lengths.sum())
        )
        rows = np.repeat(np.arange(n, dtype=np.uint64), lengths)
        # Word pairs are neighbours within one text, never across two texts.
        same_text = rows[1:] == rows[:-1]
        pairs = _fmix64((words[:-1][same_text] * _GOLDEN) ^ words[1:][same_text])
        acc = np.zeros(n * self.dim, dtype=np.float64)
        self._accumulate(acc, rows, words, 1.0)
        self._accumulate(acc, rows[1:][same_text], pairs, BIGRAM_WEIGHT)
        vectors = acc.reshape(n, self.dim)
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None]
        # A text without features (empty, only stop words) stays the zero vector.
        np.divide(vectors, norms, out=vectors, where=norms > 0)
        return vectors

    def _accumulate(
        self, acc: np.ndarray, rows: np.ndarray, hashes: np.ndarray, weight: float
    ) -> None:
        if hashes.size == 0:
            return
        packed = (rows << _ROW_SHIFT) | (hashes >> _FEATURE_DROP)
        keys, counts = np.unique(packed, return_counts=True)
        feature = keys & _FEATURE_MASK
        # One hash gives both the bucket (high bits) and the sign (lowest bit).
        bucket = ((feature >> _ONE) % np.uint64(self.dim)).astype(np.int64)
        sign = 1.0 - 2.0 * (feature & _ONE).astype(np.float64)
        weights = weight * sign * (1.0 + np.log(counts))
        slots = (keys >> _ROW_SHIFT).astype(np.int64) * self.dim + bucket
        acc += np.bincount(slots, weights=weights, minlength=acc.size)

    def _hashes(self, text: str) -> list[int]:
        cache = self._cache
        out: list[int] = []
        for token in _raw_tokens(text):
            h = cache.get(token)
            if h is None:
                h = self._learn(token)
            if h >= 0:
                out.append(h)
        return out

    def _learn(self, token: bytes) -> int:
        if len(self._cache) >= CACHE_ENTRIES:
            # Clearing beats LRU bookkeeping: the working set refills within a few batches.
            self._cache.clear()
        word = token.decode("utf-8", "surrogatepass")
        h = -1 if word in _STOP_WORDS else _word_hash(singular(word))
        self._cache[token] = h
        return h
