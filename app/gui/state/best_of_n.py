"""Best-of-N view model: one conversation, N candidates, and the last ranking."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import engine
from app.gui.state.conversation import ConversationState
from app.gui.state.events import Event
from app.gui.state.session import long_response_options
from engine.types import ranking_from_scores


@dataclass
class RankResult:
    ranking: engine.Ranking
    model: engine.ModelInfo


@dataclass
class BestOfNState:
    conversation: ConversationState = field(default_factory=ConversationState)
    candidates: list[str] = field(default_factory=lambda: ["", ""])
    result: RankResult | None = None
    candidates_changed: Event = field(default_factory=Event, repr=False, compare=False)
    result_changed: Event = field(default_factory=Event, repr=False, compare=False)

    def set_candidate(self, index: int, text: str) -> None:
        self.candidates[index] = text

    def add(self, text: str = "") -> None:
        self.candidates.append(text)
        self.candidates_changed.emit()

    def remove(self, index: int) -> None:
        del self.candidates[index]
        self.candidates_changed.emit()

    def set_candidates(self, candidates: list[str]) -> None:
        self.candidates = list(candidates)
        self.candidates_changed.emit()

    def import_file(self, path: str | Path) -> int:
        """Append candidates from a JSON list, JSONL or ``---``-separated text file.

        Uses the CLI's reader, so ``arbiter bon --candidates`` and the app accept the
        same files and report a bad line the same way. Returns how many were added.
        """
        from app.cli.scoring import read_candidates

        new = read_candidates(str(path))
        keep = [c for c in self.candidates if c.strip()]
        self.set_candidates(keep + new)
        return len(new)

    def set_result(self, result: RankResult | None) -> None:
        self.result = result
        self.result_changed.emit()

    def inputs(self) -> tuple[engine.Conversation, list[str]]:
        cands = [c for c in self.candidates if c.strip()]
        if not cands:
            raise engine.InputError("add at least one candidate", field="candidates")
        return self.conversation.to_engine(), cands

    def pick_json(self) -> str:
        """The best candidate with its score, as one JSON line (what Export writes)."""
        assert self.result is not None
        r, info = self.result.ranking, self.result.model
        return json.dumps({"conversation": self.conversation.messages(), "response": r.best.response,
                           "score": r.best.score.value, "index": r.best.index, "model": info.name},
                          ensure_ascii=False)


def rank_in_chunks(scorer: engine.Scorer, conv: engine.Conversation, candidates: list[str], *,
                   progress=None, cancel: engine.CancelToken | None = None,
                   chunk: int = 16) -> engine.Ranking:
    """``Scorer.rank`` in chunks, so a long Best-of-N reports progress and can be cancelled.

    Each chunk still shares the prompt where the model can (the prompt is computed
    once per chunk rather than once overall: a small price for a Cancel that works).
    Scores are the same as one ``rank`` call; the order is rebuilt with the engine's
    own tie rule (``ranking_from_scores``). A candidate longer than a cross-encoder reads is
    scored in windows (:func:`long_response_options`), its score naming the policy.
    """
    scores: list[engine.Score] = [None] * len(candidates)  # type: ignore[list-item]
    shared = True
    for start in range(0, len(candidates), chunk):
        if cancel is not None:
            cancel.raise_if_cancelled()
        part = scorer.rank(conv, candidates[start:start + chunk], **long_response_options(scorer))
        shared = shared and part.prompt_shared
        for c in part.candidates:
            scores[start + c.index] = c.score
        if progress is not None:
            progress(min(start + chunk, len(candidates)), len(candidates))
    return ranking_from_scores(candidates, scores, prompt_shared=shared)
