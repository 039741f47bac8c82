"""Which model is active, with which device and threads, and what it is."""

from __future__ import annotations

from dataclasses import dataclass, field

import engine
from app.gui.state.events import Event
from engine import registry


@dataclass
class ModelSession:
    """The active scorer. Loading happens on a worker (:meth:`open`); the result is
    installed on the GUI thread with :meth:`install`, which closes the previous one.
    """

    spec: str | None = None
    device: str = "cpu"
    threads: int = 0  # 0: the runtime's choice
    scorer: engine.Scorer | None = None
    #: fired with the new ModelInfo, or None when no model is open
    changed: Event = field(default_factory=Event, repr=False, compare=False)

    @staticmethod
    def default_available() -> bool:
        return registry.default_model_path() is not None

    def initial_spec(self, requested: str | None) -> str | None:
        """What to open at start: the requested model, the built-in default, or the
        first registered model; None when there is nothing (the app still opens)."""
        if requested:
            return requested
        if self.default_available():
            return registry.DEFAULT
        models = registry.list_models()
        return models[0].name if models else None

    def open(self, spec: str) -> engine.Scorer:
        """Load a model (slow: run it on a worker). Raises ModelError with advice."""
        return engine.load(spec, device=self.device, threads=self.threads or None)

    def install(self, spec: str, scorer: engine.Scorer) -> None:
        if self.scorer is not None and self.scorer is not scorer:
            self.scorer.close()
        self.spec, self.scorer = spec, scorer
        self.changed.emit(scorer.info)

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
            self.scorer = None
            self.changed.emit(None)

    @property
    def info(self) -> engine.ModelInfo | None:
        return self.scorer.info if self.scorer is not None else None

    def require(self) -> engine.Scorer:
        if self.scorer is None:
            raise engine.ModelError("no model is open: choose one in Models (or add one there)")
        return self.scorer


def long_response_options(scorer: engine.Scorer) -> dict[str, str]:
    """How the app scores a response longer than the model's context: in windows where the model
    allows them (a cross-encoder; the engine's default policy, named on every score), so the
    first model a user meets scores long answers instead of refusing them; a decoder, whose
    context is long, still says "too long"."""
    return {"on_too_long": "window"} if scorer.windows_long_responses else {}
