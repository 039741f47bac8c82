"""One module per runtime, each a :class:`engine.scorer.Scorer`.

Imported lazily by :func:`engine.registry.load` so that a runtime that is not
installed (llama-cpp-python, torch) costs nothing until a model of that format is
opened.

Each backend builds its encoder and :class:`engine.types.ModelInfo`, then calls
``Scorer.__init__``; prompt sharing is ``Scorer``'s, a backend only scores tails
(:meth:`engine.scorer.Scorer._score_tails`). Device names come from
:mod:`engine.devices`, which says what each backend does with each.
"""

BACKENDS: dict[str, str] = {
    "onnx": "engine.backends.onnx:OnnxScorer",
    "torch": "engine.backends.torch_ref:TorchScorer",
    "gguf": "engine.backends.gguf:GgufScorer",
}
