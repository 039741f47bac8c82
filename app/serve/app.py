"""The FastAPI app behind `arbiter serve`: every dialect, one batcher per model.

``create_app(settings)`` opens the models (or takes opened ones), and answers:

* ``POST /get_reward`` (OpenRLHF), ``POST /v1/rerank`` and ``/rerank`` (Cohere/Jina/vLLM),
  ``POST /classify`` and ``/v1/classify`` (vLLM), ``POST /v1/score`` (Arbiter's own);
* ``POST /v1/moderations`` (OpenAI's moderation API): each text read by
  :class:`app.moderate.scoring.RewardModerator` and decided by the thresholds
  (``--moderation-thresholds``, else the defaults), exactly as ``arbiter moderate`` does;
* ``GET /health`` (open even with a key), ``/info``, ``/metrics`` (Prometheus text),
  ``/v1/models`` (the OpenAI list clients use to find a model's name).

Request shapes are in :mod:`app.serve.dialects`, errors in :mod:`app.serve.errors`, the
request id, auth and size limits in :mod:`app.serve.gate`, batching in :mod:`app.serve.batcher`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.serve import dialects as d
from app.serve.batcher import Batcher, Overloaded, Scored, Work
from app.serve.errors import ApiError, error_response
from app.serve.gate import Gate
from app.serve.metrics import Metrics
from app.serve.settings import Settings
from engine.errors import ArbiterError, InputError, InputTooLongError
from engine.scorer import Scorer
from engine.types import Conversation, Item, conversation, ranking_from_scores, sigmoid

log = logging.getLogger(__name__)

SCORING = ("/get_reward", "/v1/score", "/v1/rerank", "/rerank", "/classify", "/v1/classify")
ENDPOINTS = frozenset({*SCORING, "/v1/moderations", "/health", "/info", "/metrics", "/v1/models"})


@dataclass(slots=True)
class Served:
    """A model as the server holds it."""

    name: str
    scorer: Scorer
    batcher: Batcher

    @property
    def cross_encoder(self) -> bool:
        return self.scorer.encoder.kind != "chat"

    @property
    def shares_prompts(self) -> bool:
        """Whether /v1/score and /rerank should go through ``rank`` (the prompt computed once)
        rather than be merged with other requests' items."""
        s = self.scorer
        return s.prompt_sharing and s.encoder.kind == "chat" and s.share_prompt_by_default


def load_models(settings: Settings) -> dict[str, Scorer]:
    """Open every ``--model`` (closing those already open if one fails)."""
    import engine

    out: dict[str, Scorer] = {}
    try:
        for m in settings.models:
            rm = engine.load(m.spec, **m.load_options)
            rm.length_control = m.length_control
            out[m.name] = rm
    except BaseException:
        for rm in out.values():
            rm.close()
        raise
    return out


def _check_windows(opened: Mapping[str, Scorer], agg: str) -> None:
    """``--on-too-long window`` needs every served model to window (a decoder's score is read at
    the end of its turn, so it cannot): refused before the server binds, naming the model."""
    from engine.errors import InputError

    for name, rm in opened.items():
        if rm.encoder.kind == "chat":
            raise InputError(f"model {name!r} is a decoder: it reads its score at the end of the response's "
                             "turn, which a window cut mid-response does not have; serve it without "
                             "--on-too-long window, or on a server of its own", field="--on-too-long")
        rm.window_policy(agg)  # the aggregation, and a context with room for a window


def create_app(settings: Settings, scorers: Mapping[str, Scorer] | None = None) -> FastAPI:
    """The app; ``scorers`` (name -> opened model) skips loading, and the app closes them at shutdown."""
    metrics = Metrics()
    opened = dict(scorers) if scorers is not None else load_models(settings)
    try:
        moderation = _moderation_thresholds(settings.moderation_thresholds, opened)
        if settings.on_too_long == "window":
            _check_windows(opened, settings.window_agg)
    except BaseException:
        if scorers is None:  # ours to close: a bad thresholds file stops the server before it binds
            for rm in opened.values():
                rm.close()
        raise
    served = {name: Served(name, rm, Batcher(rm, name, metrics, max_batch_items=settings.max_batch_items,
                                             max_wait_s=settings.max_wait_ms / 1000.0,
                                             max_queue=settings.max_queue, batch_size=settings.batch_size,
                                             windows=settings.on_too_long == "window",
                                             window_agg=settings.window_agg))
              for name, rm in opened.items()}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for s in served.values():
            s.batcher.start()
        try:
            yield
        finally:  # uvicorn has let every in-flight request finish before this runs
            for s in served.values():
                s.batcher.stop()
                s.scorer.close()

    app = FastAPI(title="Arbiter", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.served, app.state.settings, app.state.metrics = served, settings, metrics
    _install_errors(app)
    _install_routes(app, served, settings, metrics)
    _install_moderations(app, served, settings, moderation)
    app.add_middleware(Gate, api_key=settings.api_key, max_request_bytes=settings.max_request_bytes,
                       metrics=metrics, endpoints=ENDPOINTS)
    if settings.cors_origins:  # outside the gate: a browser's preflight carries no key
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
                           expose_headers=["X-Request-Id", "Retry-After"])
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("arbiter")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


# ---- errors ----------------------------------------------------------------------------------
def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Response:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> Response:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        field = _field(first.get("loc", ()))
        where = f"field '{field}': " if field else ""
        return error_response(422, "validation_error", f"{where}{first.get('msg')}", field=field or None,
                              errors=len(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        if e.status_code == 400 and request.method == "POST":  # FastAPI could not parse the body
            return error_response(422, "validation_error", f"the request body is not usable JSON ({e.detail})")
        kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        message = (f"no endpoint {request.url.path}; see GET /info" if e.status_code == 404
                   else f"{request.method} is not allowed on {request.url.path}" if e.status_code == 405
                   else str(e.detail))
        return error_response(e.status_code, kind, message, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> Response:  # pragma: no cover - a last resort
        log.error("unhandled error on %s", request.url.path, exc_info=e)
        return error_response(500, "internal_error", "internal error; the server log has the details")


def _field(loc: tuple) -> str:
    """pydantic's location as the dotted path Arbiter's errors use: ``query[2]``, ``messages[0].role``."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not part.startswith(("str", "list", "function-")):
            out += f".{part}" if out else part
    return out


def _as_api_error(e: BaseException) -> ApiError:
    """An engine (or batcher) error as the typed answer a client gets."""
    if isinstance(e, Overloaded):
        return ApiError(429, "overloaded", str(e), headers={"Retry-After": str(e.retry_after)},
                        retry_after=e.retry_after)
    if isinstance(e, InputTooLongError):
        return ApiError(422, "input_too_long", str(e), item_index=e.item_index)
    if isinstance(e, InputError):
        return ApiError(422, "validation_error", str(e), field=e.field)
    if isinstance(e, ArbiterError):  # ModelError, Cancelled: the model failed, not the request
        return ApiError(500, "model_error", str(e))
    log.error("scoring raised an unexpected error", exc_info=e)
    return ApiError(500, "internal_error", "internal error while scoring; the server log has the details")


# ---- routes ----------------------------------------------------------------------------------
def _install_routes(app: FastAPI, served: dict[str, Served], settings: Settings, metrics: Metrics) -> None:
    first = next(iter(served))

    def model(name: str | None) -> Served:
        if name is None:
            return served[first]
        if name in served:
            return served[name]
        for s in served.values():  # the model's own name (arbiter.json, GGUF general.name) works too
            if s.scorer.info.name == name:
                return s
        raise ApiError(404, "model_not_found",
                       f"no model {name!r} is served here; served: {', '.join(served)}", model=name)

    def limit(n: int, what: str) -> None:
        if n > settings.max_items_per_request:
            raise ApiError(413, "too_many_items",
                           f"{n} {what} in one request; the limit is {settings.max_items_per_request} "
                           "(--max-items-per-request): split the request", field=what)

    async def submit(s: Served, work: Work) -> Scored:
        try:
            return await s.batcher.submit(work)
        except Exception as e:
            raise _as_api_error(e) from None

    def candidates_work(s: Served, conv: Conversation, responses: list[str], sharing: bool) -> Work:
        if s.shares_prompts and sharing:
            return Work.of_candidates(conv, responses, None)
        return Work.of_items([Item(conv, r) for r in responses])

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": list(served)}

    @app.get("/info")
    async def info() -> dict:
        return _info(served, settings)

    @app.get("/metrics")
    async def metrics_text() -> Response:
        for s in served.values():
            metrics.queue_depth.labels(s.name).set(s.batcher.queued)
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "arbiter"}
                                           for n in served]}

    @app.post("/get_reward", response_model=d.GetRewardResponse)
    async def get_reward(req: d.GetRewardRequest) -> dict:
        s = model(req.model)
        limit(len(req.query), "query")
        if req.prompts is not None and len(req.prompts) != len(req.query):
            raise ApiError(422, "validation_error", f"field 'prompts': {len(req.prompts)} prompts for "
                           f"{len(req.query)} queries; give one per query", field="prompts")
        if s.cross_encoder and req.prompts is None:
            raise ApiError(422, "validation_error",
                           f"field 'prompts': model {s.name!r} is a cross-encoder: it scores (prompt, "
                           "response) pairs, so each query needs the prompt it starts with", field="prompts")
        rewards = [x.value for x in (await submit(s, Work.of_texts(req.query, req.prompts))).scores] \
            if req.query else []
        return {"rewards": rewards, "scores": rewards, "extra_logs": {}}

    @app.post("/v1/score", response_model=d.ScoreResponse, response_model_exclude_none=True)
    async def score(req: d.ScoreRequest) -> dict:
        s = model(req.model)
        limit(len(req.responses), "responses")
        conv = _conversation(req.prompt if req.prompt is not None else req.conversation, req.system)
        scored = await submit(s, candidates_work(s, conv, req.responses, req.prompt_sharing))
        return _score_body(s.name, req.responses, scored)

    async def rerank(req: d.RerankRequest) -> dict:
        s = model(req.model)
        docs = req.texts()
        limit(len(docs), "documents")
        conv = _conversation(req.query, None, field="query")
        scored = await submit(s, candidates_work(s, conv, docs, True)) if docs else Scored([])
        order = sorted(range(len(docs)), key=lambda i: (-scored.scores[i].value, i))
        if req.top_n:
            order = order[:req.top_n]
        tokens = sum(x.n_tokens for x in scored.scores)
        return {"id": f"rerank-{uuid.uuid4().hex}", "model": s.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "results": [{"index": i, "relevance_score": _activate(scored.scores[i].value, req.sigmoid),
                             **({"document": {"text": docs[i]}} if req.return_documents else {})}
                            for i in order]}

    for path in ("/v1/rerank", "/rerank"):
        app.post(path, response_model=d.RerankResponse, response_model_exclude_none=True)(rerank)

    async def classify(req: d.ClassifyRequest) -> dict:
        s = model(req.model)
        if req.messages is not None:
            work = Work.of_items([_item_from_messages(req.messages)])
        else:
            texts = [req.input] if isinstance(req.input, str) else list(req.input or [])
            limit(len(texts), "input")
            if s.cross_encoder:
                raise ApiError(422, "validation_error",
                               f"field 'input': model {s.name!r} is a cross-encoder and scores (prompt, "
                               "response) pairs, not one text: send 'messages' (the conversation, ending "
                               "with the assistant's response) or use /v1/score", field="input")
            work = Work.of_texts(texts, None)
        scored = await submit(s, work) if work.size else Scored([])
        tokens = sum(x.n_tokens for x in scored.scores)
        return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                "model": s.name,
                "data": [{"index": i, "label": "reward", "probs": [_activate(x.value, req.sigmoid)],
                          "num_classes": 1} for i, x in enumerate(scored.scores)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                          "prompt_tokens_details": None}}

    for path in ("/classify", "/v1/classify"):
        app.post(path, response_model=d.ClassifyResponse)(classify)



# ---- moderation ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Moderation:
    """A served model's moderation setup: its sha256 and the thresholds that decide for it."""

    sha256: str
    thresholds: object  # app.moderate.thresholds.Thresholds


def _moderation_thresholds(files: tuple[str, ...], opened: Mapping[str, Scorer]) -> dict[str, _Moderation]:
    """Per served model, the thresholds file that names its sha256, else the defaults; a file
    that names no served model is an error (its numbers would silently decide nothing)."""
    from app.moderate.scoring import model_sha256
    from app.moderate.thresholds import Thresholds, load

    shas = {name: model_sha256(rm.info) for name, rm in opened.items()}
    out = {name: _Moderation(sha, Thresholds.default()) for name, sha in shas.items()}
    for f in files:
        hits = 0
        for name, sha in shas.items():
            try:
                out[name] = _Moderation(sha, load(f, sha))
            except InputError as e:
                if e.field != "model_sha256":
                    raise
                continue
            hits += 1
        if not hits:
            served = ", ".join(f"{n} ({sha[:16]}...)" for n, sha in shas.items())
            raise InputError(f"these thresholds were calibrated for a model that is not served; served: "
                             f"{served}. Calibrate for a served model: arbiter moderate calibrate",
                             source=f, field="model_sha256")
    return out


def _install_moderations(app: FastAPI, served: dict[str, Served], settings: Settings,
                         moderation: dict[str, _Moderation]) -> None:
    from app.moderate.categories import category_map
    from app.moderate.job import MAX_TEXT_CHARS
    from app.moderate.scoring import RewardModerator, Text

    moderators: dict[str, RewardModerator] = {}  # one per model, made and used on its worker thread

    def texts_of(req: d.ModerationRequest) -> list[str]:
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        if not texts:
            raise ApiError(422, "validation_error", "field 'input': give at least one text", field="input")
        if len(texts) > settings.max_items_per_request:
            raise ApiError(413, "too_many_items",
                           f"{len(texts)} input in one request; the limit is {settings.max_items_per_request} "
                           "(--max-items-per-request): split the request", field="input")
        for i, t in enumerate(texts):
            where = "input" if isinstance(req.input, str) else f"input[{i}]"
            if not t.strip():
                raise ApiError(422, "validation_error", f"field '{where}': the text is empty; nothing to "
                               "moderate", field=where)
            if len(t) > MAX_TEXT_CHARS:
                raise ApiError(422, "input_too_long", f"field '{where}': {len(t):,} characters, over the "
                               f"{MAX_TEXT_CHARS:,} that moderation windows (arbiter moderate's limit)",
                               field=where)
        return texts

    @app.post("/v1/moderations", response_model=d.ModerationResponse)
    async def moderations(req: d.ModerationRequest) -> dict:
        s = served[req.model] if req.model in served else _find(served, req.model)
        texts = texts_of(req)

        def score(rm: Scorer) -> list:
            moderator = moderators.get(s.name)
            if moderator is None:
                moderator = moderators[s.name] = RewardModerator(rm, batch_size=settings.batch_size)
            return moderator.score([Text(t) for t in texts])

        try:
            verdicts = await s.batcher.submit(Work.of_call(score, len(texts)))
        except Exception as e:
            raise _as_api_error(e) from None
        m = moderation[s.name]
        results = []
        for v in verdicts:
            scores = category_map(v.category_scores)
            flagged, cats = m.thresholds.decide(v.score, scores)
            results.append({"flagged": flagged, "categories": cats, "category_scores": scores})
        return {"id": f"modr-{uuid.uuid4().hex}", "model": s.name, "results": results,
                "thresholds_version": m.thresholds.version, "model_sha256": m.sha256}


def _find(served: dict[str, Served], name: str | None) -> Served:
    """A served model by the name a request gives (the first when none): its serve name or its own."""
    if name is None:
        return next(iter(served.values()))
    for s in served.values():
        if s.scorer.info.name == name:
            return s
    raise ApiError(404, "model_not_found", f"no model {name!r} is served here; served: {', '.join(served)}",
                   model=name)


# ---- helpers ---------------------------------------------------------------------------------
def _activate(value: float, on: bool) -> float:
    return sigmoid(value) if on else value


def _conversation(raw: str | list[d.MessageIn] | None, system: str | None, *,
                  field: str = "conversation") -> Conversation:
    try:
        if isinstance(raw, str):
            return conversation(raw, system=system)
        return conversation([m.model_dump() for m in raw or []], system=system)
    except InputError as e:
        raise ApiError(422, "validation_error", str(e), field=e.field or field) from None


def _item_from_messages(messages: list[d.MessageIn]) -> Item:
    """vLLM's chat form of /classify: the last message is the assistant response to score."""
    if not messages or messages[-1].role != "assistant":
        raise ApiError(422, "validation_error", "field 'messages': the last message must be the assistant "
                       "response to score", field="messages")
    return Item(_conversation(messages[:-1], None, field="messages"), messages[-1].content)


def _score_body(name: str, responses: list[str], scored: Scored) -> dict:
    ranking = ranking_from_scores(responses, scored.scores, prompt_shared=scored.prompt_shared)
    best = ranking.best.score.value
    by_index = {c.index: c for c in ranking.candidates}
    tokens = sum(x.n_tokens for x in scored.scores)
    body = {
        "model": name,
        "scores": [{"index": i, "score": x.value, "margin_to_best": x.value - best,
                    "p_best_better": by_index[i].p_best_vs_this, "n_tokens": x.n_tokens,
                    "cut_tokens": x.cut_tokens,
                    **({"windows": x.windows, "policy": x.policy} if x.policy else {})}
                   for i, x in enumerate(scored.scores)],
        "ranking": [c.index for c in ranking.candidates],
        "best_index": ranking.best.index,
        "prompt_shared": scored.prompt_shared,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    if len(responses) == 2:
        a, b = scored.scores[0].value, scored.scores[1].value
        body |= {"margin": a - b, "p_a_better": sigmoid(a - b),
                 "winner": "A" if a > b else "B" if a < b else "tie"}
    return body


def _info(served: dict[str, Served], settings: Settings) -> dict:
    models = []
    for s in served.values():
        info = s.scorer.info
        models.append({
            "name": s.name, "model_name": info.name, "format": info.format, "dtype": info.dtype,
            "architecture": info.architecture, "encoder": "cross-encoder" if s.cross_encoder else "decoder",
            "max_length": info.max_length, "provider": info.provider,
            "length_correction": info.length_correction, "prompt_sharing": s.shares_prompts,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in info.files],
        })
    return {
        "version": _version(),
        "models": models,
        "limits": {"max_batch_items": settings.max_batch_items, "max_wait_ms": settings.max_wait_ms,
                   "max_queue": settings.max_queue, "max_items_per_request": settings.max_items_per_request,
                   "max_request_bytes": settings.max_request_bytes, "batch_size": settings.batch_size},
        "auth": settings.api_key is not None,
        "endpoints": sorted(ENDPOINTS),
    }
