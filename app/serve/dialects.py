"""The request and response bodies of each dialect `arbiter serve` speaks.

Shapes follow the tools they imitate, field for field, so their clients work unchanged:

* ``POST /get_reward``: OpenRLHF's remote reward model (``--remote_rm_url``). Its client
  sends ``{"query", "prompts", "labels"}`` (older versions only ``query``; forks add fields,
  which are accepted and ignored) and reads ``rewards``; ``openrlhf.cli.serve_rm`` answers
  ``{"rewards", "scores", "extra_logs"}``.
* ``POST /v1/rerank`` and ``/rerank``: the Cohere/Jina shape that vLLM and llama-server speak:
  ``{"query", "documents", "top_n"}`` in; ``{"id", "model", "usage", "results": [{"index",
  "relevance_score", "document": {"text"}}]}`` out, best first. ``top_n`` 0 or absent means all
  (vLLM's convention); documents may be strings or ``{"text"}`` objects (Cohere v1).
* ``POST /classify``: vLLM's classification API: ``{"model", "input"}`` (a string or a list)
  or ``{"model", "messages"}``; ``{"id", "object": "list", "created", "model", "data":
  [{"index", "label", "probs", "num_classes"}], "usage"}`` out.
* ``POST /v1/score``: Arbiter's own: one conversation, its responses, their scores, margins
  and P(better).
* ``POST /v1/moderations``: OpenAI's moderation API: ``{"input": str | [str], "model"}`` in;
  ``{"id", "model", "results": [{"flagged", "categories", "category_scores"}]}`` out, one
  result per text, with OpenAI's category names (``null`` where the model scores no category:
  a plain reward model gives only the overall score, read as ``arbiter moderate`` reads it).
  Arbiter adds ``thresholds_version`` and ``model_sha256`` beside them (clients ignore them).

Scores are Bradley-Terry logits. ``use_activation`` (vLLM's per-request flag; ``activation``
is its older name) asks for ``sigmoid(logit)`` instead, where a dialect has a relevance or
probability field; the default is the raw logit everywhere (the issue vLLM's users raised:
a one-label head squashed through an activation hides the margin).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Body(BaseModel):
    """Request bodies: unknown fields are ignored (clients of each dialect send extras)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, description="a served model's name; absent: the first")


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str


class _Activation(BaseModel):
    use_activation: bool | None = Field(default=None, description="sigmoid(logit) instead of the logit")
    activation: bool | None = Field(default=None, description="vLLM's older name of use_activation")

    @property
    def sigmoid(self) -> bool:
        return bool(self.use_activation if self.use_activation is not None else self.activation)


# ---- OpenRLHF ------------------------------------------------------------------------------
class GetRewardRequest(_Body):
    query: list[str] = Field(description="full templated prompt + response texts")
    prompts: list[str | None] | None = Field(default=None, description="the prompt each query starts with")
    labels: list[Any] | None = Field(default=None, description="accepted and ignored (rule-based rewards)")


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, Any] = Field(default_factory=dict)


# ---- Cohere / Jina / vLLM rerank -------------------------------------------------------------
class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str


class RerankRequest(_Body, _Activation):
    query: str = Field(description="the user's prompt")
    documents: list[str | DocumentIn] = Field(description="candidate responses")
    top_n: int | None = Field(default=None, ge=0, description="results to return; 0 or absent: all")
    return_documents: bool = Field(default=True, description="include each document's text")

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]


# ---- vLLM classify ---------------------------------------------------------------------------
class ClassifyRequest(_Body, _Activation):
    input: str | list[str] | None = Field(default=None, description="rendered text(s), scored as given")
    messages: list[MessageIn] | None = Field(
        default=None, description="a conversation whose last message is the assistant response to score")

    @model_validator(mode="after")
    def _one_input(self) -> ClassifyRequest:
        if (self.input is None) == (self.messages is None):
            raise ValueError("give exactly one of 'input' (text) or 'messages' (a conversation)")
        return self


class ClassifyData(BaseModel):
    index: int
    label: str
    probs: list[float]
    num_classes: int


class ClassifyUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


class ClassifyResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ClassifyData]
    usage: ClassifyUsage


# ---- Arbiter's own ---------------------------------------------------------------------------
class ScoreRequest(_Body):
    conversation: list[MessageIn] | None = Field(default=None, description="the turns before the response")
    prompt: str | None = Field(default=None, description="a single user turn (instead of conversation)")
    system: str | None = Field(default=None, description="a system prompt placed first")
    responses: list[str] = Field(min_length=1, description="the responses to score")
    prompt_sharing: bool = Field(default=True, description="compute the conversation once where the "
                                                           "model's format allows")

    @model_validator(mode="after")
    def _one_conversation(self) -> ScoreRequest:
        if (self.conversation is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'prompt' (a single user turn) or 'conversation'")
        return self


class ScoredResponse(BaseModel):
    index: int
    score: float
    margin_to_best: float  # score - best score, reward units (logits)
    p_best_better: float  # P(the best response is better than this one); 0.5 for the best
    n_tokens: int
    cut_tokens: int  # conversation tokens cut from its start to fit the context
    #: with ``arbiter serve --on-too-long window`` only: windows the response was scored in
    #: (1: it fit), and the policy, e.g. ``window-max/384/stride-288``
    windows: int | None = None
    policy: str | None = None


class ScoreResponse(BaseModel):
    model: str
    scores: list[ScoredResponse]  # in input order
    ranking: list[int]  # indices, best first (ties keep input order)
    best_index: int
    prompt_shared: bool
    #: two responses: A is the first, B the second
    margin: float | None = None
    p_a_better: float | None = None
    winner: str | None = None
    usage: RerankUsage


# ---- OpenAI moderation -----------------------------------------------------------------------
class ModerationRequest(_Body):
    input: str | list[str] = Field(description="one text or a list of texts, each moderated alone")


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool | None]  # None: the model does not score the category
    category_scores: dict[str, float | None]


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]  # in input order
    thresholds_version: str
    model_sha256: str
