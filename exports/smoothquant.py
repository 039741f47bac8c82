"""SmoothQuant for static int8: move activation outliers into the weights before quantizing.

A transformer's matmul inputs carry a few channels whose values are tens of times the
rest (LayerNorm outputs especially). One int8 scale per activation tensor must cover the
largest, so the bulk of the channels get a handful of levels: that is where static int8
loses a trained reward model's small score margins. SmoothQuant (Xiao et al., 2022)
divides channel j of a matmul's input X by s_j and multiplies row j of its weight W by
the same s_j, which leaves X @ W unchanged in exact arithmetic:

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

``alpha`` sets how much of the range moves into the weights (0: none; 0.5: both sides
meet halfway). Weights are quantized per output channel, so a scaled input row costs
them little. Here the division is a ``Mul`` inserted before the matmuls that read X (a
BERT layer's LayerNorm output is also the residual stream, so it cannot be folded into
the LayerNorm); every weighted matmul reading the same X shares one ``s``.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: model files above this are written with their weights in a separate ``.onnx_data`` file
EXTERNAL_DATA_BYTES = 1 << 30


def smooth_model(src: Path, dst: Path, feeds: Sequence[dict[str, np.ndarray]], alpha: float,
                 skip: Sequence[str] = ()) -> int:
    """Write ``src`` smoothed to ``dst``; returns how many matmul inputs were smoothed.

    ``feeds``: calibration inputs (one item each) whose activations give max|X_j|;
    ``skip``: names of matmul nodes left as they are (the score head stays float anyway).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    groups = _weighted_groups(graph, weights, set(skip))
    if not groups:
        onnx.save(model, str(dst))
        return 0
    amax = _input_channel_max(model, list(groups), feeds)
    muls: dict[str, object] = {}
    for k, (x, nodes) in enumerate(groups.items()):
        ws = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        wmax = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)
        s = _scales(amax[x], wmax, alpha)
        for n, w in zip(nodes, ws, strict=True):
            weights[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(w.dtype), n.input[1]))
        inv = f"smooth{k}/inv_scale"
        graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        smoothed = f"smooth{k}/{x}"
        muls[x] = helper.make_node("Mul", [x, inv], [smoothed], name=f"/smooth{k}/Mul")
        for n in nodes:
            n.input[0] = smoothed
    _insert_after_producers(graph, muls)
    _save(model, dst)
    return len(groups)


def _insert_after_producers(graph, muls: dict) -> None:
    """Each new node right after the node making its input (first for a graph input): ONNX
    nodes must stay in topological order."""
    order = [m for x, m in muls.items() if not any(x in n.output for n in graph.node)]
    for n in graph.node:
        order.append(n)
        order.extend(muls[o] for o in n.output if o in muls)
    del graph.node[:]
    graph.node.extend(order)


def _weighted_groups(graph, weights: dict, skip: set[str]) -> dict[str, list]:
    """Activation tensor -> the MatMuls that multiply it by a 2-D weight initializer [in, out].

    A weight that some other node also reads is left alone (scaling it would change that node).
    """
    readers: dict[str, int] = defaultdict(int)
    for n in graph.node:
        for name in n.input:
            readers[name] += 1
    groups: dict[str, list] = defaultdict(list)
    for n in graph.node:
        if (n.op_type == "MatMul" and n.name not in skip and n.input[0] not in weights
                and n.input[1] in weights and len(weights[n.input[1]].dims) == 2 and readers[n.input[1]] == 1):
            groups[n.input[0]].append(n)
    return dict(groups)


def _input_channel_max(model, tensors: list[str], feeds: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each tensor over every calibration item (fp32 runs)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    with tempfile.TemporaryDirectory(prefix="arbiter-smooth-") as tmp:
        path = Path(tmp) / "probe.onnx"
        _save(probe, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out: dict[str, np.ndarray] = {}
        for feed in feeds:
            for t, x in zip(tensors, session.run(tensors, feed), strict=True):
                m = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
                out[t] = m if t not in out else np.maximum(out[t], m)
    return out


def _scales(amax: np.ndarray, wmax: np.ndarray, alpha: float) -> np.ndarray:
    """Per-channel s; a channel that is zero on either side keeps s = 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        s = amax.astype(np.float64) ** alpha / wmax.astype(np.float64) ** (1.0 - alpha)
    s = np.where(np.isfinite(s) & (s > 0) & (amax > 0) & (wmax > 0), s, 1.0)
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


def _save(model, path: Path) -> None:
    import onnx

    # protobuf cannot measure (or write) a message over 2 GB, so count the weights' bytes
    big = sum(len(i.raw_data) for i in model.graph.initializer) > EXTERNAL_DATA_BYTES
    onnx.save(model, str(path), save_as_external_data=big, location=f"{path.name}_data" if big else None)
