"""The bundled MiniLM computing in int8: the same weights, multiplied as integers.

The pinned model file stores every weight matrix as int8 with a float scale per output
column, but its graph turns them back into float32 (Cast, Mul) before each MatMul, so
onnxruntime computes in float32. This module rewrites each such `MatMul(x, Mul(Cast(W), s))`
into onnxruntime's `DynamicQuantizeMatMul(x, W, s)`: the weights stay the very int8 values
and scales of the pinned file (nothing is quantized again), and only the activations are
quantized, per call, to uint8. On this project's 2-core AVX2 machine that embeds 1.76x as
fast as float32 on one core, with SciFact dense nDCG@10 0.644 against 0.648 (issue 21).

The rewrite is deterministic: the same pinned input gives the same bytes, pinned here by
sha256 and checked on every load, under a model id of its own so that a store never mixes
vectors of the two. It runs once, at setup (`run.sh`: `python -m roxi_mp.embedders.minilm_int8`),
or at the first load if setup did not, and needs the `onnx` package only then.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

from ..errors import ConfigError

#: id recorded in the store for vectors computed in int8
MODEL_ID = "all-MiniLM-L6-v2-int8-dynamic"
#: sha256 of the rewritten model (22,949,227 bytes) made from the pinned model.onnx
MODEL_SHA256 = "266a615df23ac55837010b4a4a0f7eb64759e2df2ff8299529ffef142a3fcd59"
#: where the rewritten model is kept: beside the installation that made it
PREPARED_NAME = "all-MiniLM-L6-v2-int8-dynamic.onnx"
#: onnxruntime's operator: float A times int8 B with a scale per column, A quantized per call
OP = "DynamicQuantizeMatMul"
MS_DOMAIN = "com.microsoft"


def prepared_path() -> Path:
    """The rewritten model's path: `<sys.prefix>/share/roxi-mp/` (the virtualenv run.sh made),
    unless ROXI_MODEL_DIR names another directory."""
    base = os.environ.get("ROXI_MODEL_DIR") or str(Path(sys.prefix) / "share" / "roxi-mp")
    return Path(base) / PREPARED_NAME


def rewrite(source: bytes) -> bytes:
    """The int8-computing model of the pinned float-computing one (see the module docstring)."""
    try:
        import numpy as np
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as exc:
        raise ConfigError(f"preparing the int8 MiniLM needs the onnx package ({exc}): "
                          f"pip install onnx, or set minilm.compute = \"float32\"") from None
    model = onnx.load_from_string(source)
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    made_by = {out: node for node in graph.node for out in node.output}
    nodes, rewritten = [], 0
    for node in graph.node:
        found = _int8_weight(node, made_by, weights)
        if found is None:
            nodes.append(node)
            continue
        w_name, scale = found
        columns = scale.shape[1]
        col_scale = numpy_helper.from_array(scale.reshape(columns).astype(np.float32), f"{w_name}_col_scale")
        zero = numpy_helper.from_array(np.zeros(columns, dtype=np.int8), f"{w_name}_zero")
        graph.initializer.extend([col_scale, zero])
        nodes.append(helper.make_node(OP, [node.input[0], w_name, col_scale.name, zero.name], list(node.output),
                                      name=f"{node.name}_int8", domain=MS_DOMAIN))
        rewritten += 1
    if rewritten == 0:
        raise ConfigError("minilm model has no int8 weight matrices to compute with")
    del graph.node[:]
    graph.node.extend(_live(nodes, {out.name for out in graph.output}))
    used = {name for node in graph.node for name in node.input}
    live_weights = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live_weights)
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model.SerializeToString()


def _int8_weight(node, made_by: dict, weights: dict):
    """(int8 weight name, (1, columns) scale) when `node` is MatMul(x, Mul(Cast(W), scale))
    over an int8 matrix W with a scale per column; else None."""
    from onnx import TensorProto, numpy_helper
    if node.op_type != "MatMul" or node.input[1] not in made_by:
        return None
    mul = made_by[node.input[1]]
    if mul.op_type != "Mul" or mul.input[0] not in made_by or made_by[mul.input[0]].op_type != "Cast":
        return None
    w_name, s_name = made_by[mul.input[0]].input[0], mul.input[1]
    w, s = weights.get(w_name), weights.get(s_name)
    if w is None or s is None or w.data_type != TensorProto.INT8 or len(w.dims) != 2:
        return None
    scale = numpy_helper.to_array(s)
    return (w_name, scale) if scale.shape == (1, w.dims[1]) else None


def _live(nodes: list, outputs: set[str]) -> list:
    """`nodes` without those whose outputs nothing reads (the weights' Cast and Mul)."""
    while True:
        read = {name for node in nodes for name in node.input} | outputs
        kept = [node for node in nodes if any(out in read for out in node.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept


def prepare(source_path: Path, target: Path | None = None) -> Path:
    """Write the rewritten model to `target` (default prepared_path()) unless it is there
    with the pinned hash; written whole or not at all (a temporary file, then a rename)."""
    target = target or prepared_path()
    if _sha256(target) == MODEL_SHA256:
        return target
    data = rewrite(Path(source_path).read_bytes())
    actual = hashlib.sha256(data).hexdigest()
    if actual != MODEL_SHA256:
        raise ConfigError(f"int8 MiniLM rewrite gave sha256 {actual}, expected {MODEL_SHA256} "
                          f"(another onnx version?); set minilm.compute = \"float32\"")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".minilm-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise ConfigError(f"cannot write the int8 MiniLM to {target} ({exc.strerror or exc}); "
                          f"run `python -m roxi_mp.embedders.minilm_int8` as the installing user "
                          f"or set ROXI_MODEL_DIR") from None
    return target


def _sha256(path: Path) -> str | None:
    """The file's sha256, None when it cannot be read (missing: not prepared yet)."""
    from .minilm import file_sha256  # minilm imports this module
    try:
        return file_sha256(path)
    except OSError:
        return None


def main() -> int:
    """`python -m roxi_mp.embedders.minilm_int8`: prepare the int8 model now (run.sh's setup)."""
    from .minilm import _check_model, _default_model_path
    try:
        source = _default_model_path()
        _check_model(source)
        path = prepare(source)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"int8 MiniLM ready: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
