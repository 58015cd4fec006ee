"""MiniLM computing in int8 (issue 21): the rewrite, its pin, and `compute = "auto"`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from roxi_mp.embedders import make_embedder, minilm_compute  # noqa: E402
from roxi_mp.embedders import minilm_int8  # noqa: E402
from roxi_mp.embedders.minilm import MODEL_ID as FLOAT32_ID  # noqa: E402
from roxi_mp.embedders.minilm import MiniLMEmbedder, _default_model_path  # noqa: E402
from roxi_mp.errors import ConfigError, ModelMismatch  # noqa: E402
from roxi_mp.store import Store  # noqa: E402
from tests.unit.test_minilm import corpus_words  # noqa: E402


@pytest.fixture(scope="module")
def pair() -> tuple[MiniLMEmbedder, MiniLMEmbedder]:
    models = MiniLMEmbedder(), MiniLMEmbedder(compute="int8")
    yield models
    for model in models:
        model.unload()


def test_int8_has_its_own_model_id_and_says_how_it_computes(pair) -> None:
    f32, i8 = pair
    assert f32.model_id == FLOAT32_ID == "all-MiniLM-L6-v2-int8"
    assert i8.model_id == minilm_int8.MODEL_ID == "all-MiniLM-L6-v2-int8-dynamic"
    assert (f32.status()["compute"], i8.status()["compute"]) == ("float32", "int8")


def test_int8_vectors_stay_close_to_float32(pair) -> None:
    f32, i8 = pair
    words = corpus_words()
    texts = [" ".join(words[i:i + 60]) for i in range(0, 60 * 24, 60)]
    a, b = f32.encode(texts), i8.encode(texts)
    cosines = (a * b).sum(axis=1)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    # measured 0.992 at worst, 0.995 on average over 64 sample-corpus texts of 200 words
    assert cosines.min() > 0.98 and cosines.mean() > 0.99, cosines
    heart, mi = i8.encode(["heart attack", "myocardial infarction"])
    assert float(heart @ mi) == pytest.approx(0.594, abs=0.02)  # the float32 model's figure


def test_the_rewrite_keeps_the_files_int8_weights_and_is_pinned(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    path = minilm_int8.prepare(_default_model_path(), tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count(minilm_int8.OP) == 36 and "MatMul" in ops  # attention's own products stay float
    assert not any(node.op_type == "Cast" and node.input[0].endswith("_q") and "embeddings" not in node.input[0]
                   for node in graph.node)  # no weight matrix is turned to float first
    assert minilm_int8._sha256(path) == minilm_int8.MODEL_SHA256


def test_a_damaged_prepared_file_is_made_again(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    minilm_int8.prepare(_default_model_path(), target)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    minilm_int8.prepare(_default_model_path(), target)
    assert minilm_int8._sha256(target) == minilm_int8.MODEL_SHA256
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left


def test_an_unwritable_place_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot write the int8 MiniLM"):
        minilm_int8.prepare(_default_model_path(), blocker / "m.onnx")


def test_a_model_without_int8_matrices_is_refused() -> None:
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ConfigError, match="no int8 weight matrices"):
        minilm_int8.rewrite(helper.make_model(graph).SerializeToString())


def test_the_model_dir_can_be_moved_by_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROXI_MODEL_DIR", str(tmp_path))
    assert minilm_int8.prepared_path() == tmp_path / minilm_int8.PREPARED_NAME
    monkeypatch.delenv("ROXI_MODEL_DIR")
    assert minilm_int8.prepared_path().parent == Path(sys.prefix) / "share" / "roxi-mp"


def test_unknown_compute_is_refused(make_config) -> None:
    with pytest.raises(ConfigError, match="minilm compute"):
        MiniLMEmbedder(compute="int4")
    with pytest.raises(ConfigError, match="minilm.compute"):
        make_config(minilm__compute="fast")


def record(cfg, model_id: str) -> None:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    with Store(cfg.db_path) as store:
        store.ensure_model(model_id, 384)


def test_auto_is_int8_for_a_new_store_and_keeps_a_float32_one(make_config) -> None:
    cfg = make_config(embedder__backend="minilm")
    assert Store.recorded_model(cfg.db_path) is None
    assert minilm_compute(cfg) == "int8"  # no store yet
    assert make_embedder(cfg).model_id == minilm_int8.MODEL_ID
    record(cfg, FLOAT32_ID)
    assert Store.recorded_model(cfg.db_path) == FLOAT32_ID
    assert minilm_compute(cfg) == "float32"  # an existing store keeps its vectors' model
    assert make_embedder(cfg).model_id == FLOAT32_ID
    assert minilm_compute(cfg, fresh=True) == "int8"  # `roxi reembed --model minilm` moves it


def test_a_fixed_compute_against_a_store_of_the_other_is_refused_by_name(make_config) -> None:
    cfg = make_config(embedder__backend="minilm", minilm__compute="int8")
    record(cfg, FLOAT32_ID)
    model = make_embedder(cfg)
    with Store(cfg.db_path) as store, pytest.raises(ModelMismatch, match="all-MiniLM-L6-v2-int8-dynamic"):
        store.ensure_model(model.model_id, model.dim)


def test_auto_on_a_store_of_another_model_gives_int8_and_the_store_refuses_it(make_config) -> None:
    cfg = make_config(embedder__backend="minilm")
    record(cfg, "hashing-v1-384")
    assert minilm_compute(cfg) == "int8"
