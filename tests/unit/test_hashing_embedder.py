"""Unit tests of the hashing embedder and the embedder factory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from roxi_mp.embedders import Embedder, HashingEmbedder, make_embedder
from roxi_mp.embedders import hashing
from roxi_mp.embedders.hashing import singular, tokenize
from roxi_mp.errors import BadInput, ConfigError

REPO = Path(__file__).resolve().parents[2]

TEXTS = [
    "Uric acid crystals in the big toe.",
    "Systemic lupus erythematosus: an autoimmune disease (ANA-positive), café au lait?",
    "",
    "snake_case identifiers, ÉLAN, ﬁbrosis and 2024 numbers",
]
GOUT = (
    "Gout is an inflammatory arthritis caused by monosodium urate crystals deposited in "
    "joints. Attacks often start at night in the big toe, and a high level of uric acid in "
    "the blood is the underlying cause."
)
LUPUS = (
    "Systemic lupus erythematosus is an autoimmune disease in which the immune system "
    "attacks healthy tissue, causing joint pain, skin rashes, fatigue and kidney problems."
)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)  # rows are unit length


def test_shape_dtype_and_model_id() -> None:
    embedder = HashingEmbedder(dim=256)
    vectors = embedder.encode(TEXTS)
    assert vectors.shape == (4, 256)
    assert vectors.dtype == np.float32
    assert embedder.model_id == "hashing-v1-256"
    assert HashingEmbedder().dim == 1024


def test_empty_list_gives_zero_rows() -> None:
    vectors = HashingEmbedder(dim=64).encode([])
    assert vectors.shape == (0, 64)
    assert vectors.dtype == np.float32


def test_rows_have_unit_norm_or_zero_without_features() -> None:
    vectors = HashingEmbedder().encode(["gout", GOUT, "", "   ", "the of and", "!!! ___ ..."])
    norms = np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(norms, [1, 1, 0, 0, 0, 0], atol=1e-6)
    assert np.isfinite(vectors).all()


def test_two_instances_agree_bit_for_bit() -> None:
    first = HashingEmbedder().encode(TEXTS)
    second = HashingEmbedder().encode(list(reversed(TEXTS)))[::-1]
    assert first.tobytes() == second.tobytes()


def test_another_process_with_another_hash_seed_agrees() -> None:
    code = (
        "import sys; from roxi_mp.embedders.hashing import HashingEmbedder; "
        f"sys.stdout.write(HashingEmbedder().encode({TEXTS!r}).tobytes().hex())"
    )
    # A different PYTHONHASHSEED would change any vector built on the builtin hash().
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60, check=True,
    )
    assert result.stdout == HashingEmbedder().encode(TEXTS).tobytes().hex()


def test_known_vectors_are_pinned() -> None:
    # Stored vectors are compared with new ones for years; if this fails, the scheme
    # changed and SCHEME (hence model_id) must be bumped.
    vector = HashingEmbedder().encode(["crystal"])[0]
    assert np.flatnonzero(vector).tolist() == [909]
    assert vector[909] == 1.0
    pair = HashingEmbedder().encode(["uric acid"])[0]
    assert np.flatnonzero(pair).tolist() == [242, 679, 999]
    np.testing.assert_allclose(pair[[242, 679, 999]], [2 / 3, -1 / 3, 2 / 3], rtol=1e-6)


def test_related_text_is_closer_than_unrelated() -> None:
    query, gout, lupus = HashingEmbedder().encode(
        ["uric acid crystals in the big toe", GOUT, LUPUS]
    )
    assert cosine(query, gout) > cosine(query, lupus) + 0.2


def test_plurals_map_to_the_singular() -> None:
    embedder = HashingEmbedder()
    for plural, single in [("crystals", "crystal"), ("arteries", "artery"), ("boxes", "box"),
                           ("Classes", "class"), ("joints", "joint")]:
        a, b = embedder.encode([plural, single])
        assert a.tobytes() == b.tobytes(), plural
    for word in ["glass", "virus", "arthritis", "gas", "ads"]:
        assert singular(word) == word
        a, b = embedder.encode([word, word[:-1]])
        assert cosine(a, b) < 0.5, word


def test_tokens_drop_stop_words_and_split_underscores() -> None:
    assert tokenize("The patient's big_toe: crystals, ﬁbrosis, CAFÉ") == [
        "patient", "big", "toe", "crystal", "fibrosis", "café"
    ]
    embedder = HashingEmbedder()
    a, b = embedder.encode(["the crystal is in a joint", "crystal joint"])
    assert a.tobytes() == b.tobytes()


def test_ascii_and_unicode_paths_agree() -> None:
    # A no-break space or a decomposed accent sends the text down the regex path.
    embedder = HashingEmbedder()
    a, b = embedder.encode(["Uric acid crystals, big toe", "Uric acid crystals,\u00a0big toe"])
    assert a.tobytes() == b.tobytes()
    c, d = embedder.encode(["cafe\u0301 au lait", "CAFÉ au lait"])
    assert c.tobytes() == d.tobytes()


def test_word_order_matters_through_word_pairs() -> None:
    a, b = HashingEmbedder().encode(["uric acid", "acid uric"])
    assert 0.5 < cosine(a, b) < 0.99


def test_batches_and_cache_resets_do_not_change_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [f"{GOUT} extra{i} words{i % 7}" for i in range(40)] + TEXTS
    expected = HashingEmbedder().encode(texts)
    monkeypatch.setattr(hashing, "BATCH_TEXTS", 3)
    monkeypatch.setattr(hashing, "CACHE_ENTRIES", 5)
    embedder = HashingEmbedder()
    assert embedder.encode(texts).tobytes() == expected.tobytes()
    assert len(embedder._cache) <= 5
    embedder.unload()
    assert embedder.encode(texts).tobytes() == expected.tobytes()


@pytest.mark.parametrize("dim", [63, 0, -1024, True, "1024", 1024.0])
def test_invalid_dim_is_a_config_error(dim: object) -> None:
    with pytest.raises(ConfigError, match="dim"):
        HashingEmbedder(dim=dim)  # type: ignore[arg-type]


def test_bad_texts_are_bad_input() -> None:
    embedder = HashingEmbedder()
    with pytest.raises(BadInput):
        embedder.encode("a bare string")
    with pytest.raises(BadInput):
        embedder.encode(["ok", 3])  # type: ignore[list-item]


def test_factory_builds_known_backends_only(make_config) -> None:
    embedder = make_embedder(make_config(embedder__backend="hashing", hashing__dim=128))
    assert isinstance(embedder, HashingEmbedder)
    assert embedder.model_id == "hashing-v1-128"
    with pytest.raises(ConfigError, match="unknown embedder backend"):
        make_embedder(make_config(), "bert")


def test_base_class_defaults() -> None:
    with pytest.raises(TypeError):
        Embedder()  # type: ignore[abstract]
    embedder = HashingEmbedder()
    embedder.load()
    assert embedder.loaded
    before = embedder.encode(["uric acid crystals"])
    embedder.unload()
    assert not embedder.loaded  # deep sleep drops the token cache
    again = embedder.encode(["uric acid crystals"])  # and encode reloads it lazily
    assert embedder.loaded
    assert np.array_equal(before, again)


def test_term_frequency_is_sublinear() -> None:
    embedder = HashingEmbedder()
    (crystal,) = np.flatnonzero(embedder.encode(["crystal"])[0])
    (uric,) = np.flatnonzero(embedder.encode(["uric"])[0])
    vector = embedder.encode(["crystal crystal crystal crystal uric"])[0]
    assert abs(vector[crystal] / vector[uric]) == pytest.approx(1 + np.log(4), rel=1e-5)
