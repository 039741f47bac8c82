"""Curation stage 1 (Skywork-Reward-V2 §4): train, find what the RM gets wrong, label more of it.

Each round::

    silver (+ judge labels of earlier rounds) --train (trainer.bt)--> RM, checkpoint picked on gold
    gold (+ human labels of earlier rounds) --RM--> p = sigmoid(r(chosen) - r(rejected)) per pair
    gold pairs, k = retrieval_k(p) each --nearest neighbours (embeddings)--> pool pairs
    pool pairs --attributes, then judges (both orders, n samples, <= 8 gold examples)--> labels
    labels --> silver (label_origin llm);  abstentions recorded, not labelled
    objective, low-controversy share --> the human queue (AnnotationStore, same curation.db)

Resumable at round and pair level: a round's state, every gold p, the retrieved list and
every pair's votes and decision are committed as they happen in ``OUT/curation.db``
(:class:`RunStore`), every judge answer in ``OUT/calls.db`` (the call cache), and the
trainer resumes its own checkpoint (``OUT/round-N/rm/last``). A rerun after SIGKILL
continues where it stopped and ends with the same records; a rerun of a finished round
asks the judges nothing.

Human labels are read at the start of each round and snapshotted into gold (pairs with
``round_added`` = the round); a pair a human labelled leaves silver, whatever a judge said.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.output import write_text
from trainer.curate.cache import cached_judges
from trainer.curate.runstore import RunStore
from trainer.data.record import PreferencePair

#: what the log lines go to (the CLI prints them on stderr)
Progress = Callable[[str], None]
#: labels a judge can give (stored order: "1" = the pair's chosen, as read, is better)
JUDGE_LABELS = ("1", "2", "tie")
#: gold examples shown in one labelling prompt (the paper's limit)
MAX_EXAMPLES = 8


@dataclass
class RoundMetrics:
    """What one round did; stored as the ``rounds.metrics`` JSON and printed per round."""

    round: int
    gold_pairs: int = 0  # gold pairs scored (ties and too-long pairs left out)
    human_gold: int = 0  # of them, pairs humans labelled in earlier rounds
    gold_accuracy: float | None = None  # share with r(chosen) > r(rejected)
    gold_accuracy_length_balanced: float | None = None  # mean of chosen-longer / chosen-shorter accuracy
    silver_pairs: int = 0  # pairs the RM was trained on (inputs + judge labels of earlier rounds)
    train_steps: int = 0
    best_step: int | None = None
    retrieved: int = 0
    judged: int = 0
    labelled: int = 0
    abstained: int = 0
    queued_for_humans: int = 0
    # share of pairs (every judge answered) where all judges agree; None with one judge
    judge_agreement: float | None = None
    # per judge: share of (pair, sample) answered in both orders where the two orders agree
    order_agreement: dict[str, float | None] = field(default_factory=dict)
    # share of pairs with a judge label and a human majority label ("both_bad" left out) that agree
    judge_vs_human: float | None = None
    judge_vs_human_pairs: int = 0
    calls_made: int = 0  # judge requests of the run that finished the round (retries included)
    cache_hits: int = 0
    # judge requests this invocation made for the round (0 for a round finished before); not a record
    calls_this_run: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> RoundMetrics:
        names = set(RoundMetrics.__dataclass_fields__)
        return RoundMetrics(**{k: v for k, v in d.items() if k in names})

    def summary(self) -> str:
        """One console line per round."""
        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.1f}%"

        orders = ", ".join(f"{j} {pct(v)}" for j, v in self.order_agreement.items()) or "n/a"
        return (f"round {self.round}: gold accuracy {pct(self.gold_accuracy)} (length-balanced "
                f"{pct(self.gold_accuracy_length_balanced)}, {self.gold_pairs} pairs, {self.human_gold} human); "
                f"retrieved {self.retrieved}, judged {self.judged}, labelled {self.labelled}, "
                f"abstained {self.abstained}, to humans {self.queued_for_humans}; judge agreement "
                f"{pct(self.judge_agreement)}; both orders agree: {orders}; judge vs human "
                f"{pct(self.judge_vs_human)} ({self.judge_vs_human_pairs} pairs); judge calls "
                f"{self.calls_made} ({self.cache_hits} cached)")


@dataclass
class _Run:
    """What every step of every round reads."""

    store: RunStore
    out: Path
    judges: list[Any]  # CachedJudge
    base: Path
    cfg: Any  # TrainConfig
    embedder: Any  # engine.embed.Embedder, opened lazily
    embed_cache: Any  # engine.embed.EmbeddingCache
    samples: int
    human_share: float
    overlap: int
    seed: int
    log: Progress
    annotations: Any  # AnnotationStore
    concurrency: int = 4  # pairs judged at once (HTTP judges overlap; a local one serialises)
    own_embedder: bool = False  # opened here from a folder, so closed here


def run_stage1(pool: Sequence[PreferencePair], gold: Sequence[PreferencePair], silver: Sequence[PreferencePair],
               judges: Sequence[Any], rounds: int, out: str | Path, *, base: str | Path | None = None,
               train_config: Any = None, embedder: Any = None, samples: int = 1, human_share: float = 0.25,
               overlap: int = 1, seed: int = 0, concurrency: int = 4,
               progress: Progress | None = None) -> list[RoundMetrics]:
    """Run (or resume) rounds 1..``rounds`` into ``out``; see the module docstring.

    ``judges``: :class:`~trainer.curate.judges.Judge` objects (each is put behind the call
    cache ``OUT/calls.db``) or ready :class:`~trainer.curate.cache.CachedJudge` ones.
    ``embedder``: an embedder folder (exports.embedder.default_embedder() makes one) or an
    open :class:`engine.embed.Embedder`. ``base``: the reward model's base (default the
    installed all-MiniLM-L6-v2). ``human_share``: at most this share of a round's retrieved
    pairs goes to the human queue, the objective low-controversy ones first; ``overlap``
    annotators each.
    """
    from engine.embed import EmbeddingCache
    from trainer.curate.annotations import AnnotationStore

    if rounds < 1:
        raise InputError(f"must be at least 1; got {rounds}", field="rounds")
    if samples < 1:
        raise InputError(f"must be at least 1; got {samples}", field="samples")
    if not 0.0 <= human_share <= 1.0:
        raise InputError(f"must be between 0 and 1; got {human_share}", field="human_share")
    if not judges:
        raise InputError("at least one judge is needed", field="judge")
    if embedder is None:
        raise InputError("an embedder folder is needed (exports.embedder.default_embedder())", field="embedder")
    gold = list(gold)
    if not gold:
        raise InputError("the gold set is empty: stage 1 picks checkpoints and retrieves on gold", field="gold")
    out = Path(out)
    store = RunStore(out)
    try:
        for name, pairs in (("pool", pool), ("gold", gold), ("silver", silver)):
            store.import_set(name, pairs)
    except BaseException:
        store.close()
        raise
    run = _Run(store=store, out=out, judges=cached_judges(judges, out), base=_base(base),
               cfg=_train_config(train_config), embedder=embedder, embed_cache=EmbeddingCache(out / "embeddings.db"),
               samples=samples, human_share=human_share, overlap=overlap, seed=seed,
               log=progress or (lambda _: None), annotations=AnnotationStore(store.path),
               concurrency=concurrency)
    try:
        results = [_round(run, r) for r in range(1, rounds + 1)]
        # every judge label so far, any round; whole or not at all (a kill leaves the old file)
        write_text(out / "silver.jsonl", "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n"
                                                 for p in _judge_silver(run)))
        return results
    finally:
        run.annotations.close()
        run.embed_cache.close()
        if run.own_embedder:
            run.embedder.close()
        for cache in {id(j.cache): j.cache for j in run.judges if j not in judges}.values():
            cache.close()  # the call cache opened here (a caller's CachedJudge keeps its own)
        store.close()


# -- setup ------------------------------------------------------------------------------

def _base(base: str | Path | None) -> Path:
    if base is not None:
        return Path(base)
    from trainer.reference_models import minilm_dir

    return minilm_dir()


def _train_config(cfg: Any) -> Any:
    """Stage 1 retrains every round, so the default recipe is small: 128 tokens, no bar."""
    from trainer.bt.config import TrainConfig

    if cfg is None:
        return TrainConfig(max_length=128, progress=False)
    return cfg


def _embedder(run: _Run) -> Any:
    from engine.embed import Embedder

    if not isinstance(run.embedder, Embedder):
        run.embedder = Embedder.open(Path(run.embedder), threads=run.cfg.threads)
        run.own_embedder = True
    return run.embedder


def _counters(run: _Run) -> tuple[int, int]:
    return sum(j.calls_made for j in run.judges), sum(j.cache_hits for j in run.judges)


# -- one round ----------------------------------------------------------------------------

def _round(run: _Run, r: int) -> RoundMetrics:
    store = run.store
    state = store.round_state(r)
    if state == "done":
        m = RoundMetrics.from_dict(store.round_metrics(r) or {"round": r})
        m.calls_this_run = 0
        run.log(f"round {r}: done before; " + m.summary().split(": ", 1)[1])
        return m
    calls0, hits0 = _counters(run)
    m = RoundMetrics.from_dict(store.round_metrics(r) or {"round": r})
    if state is None:
        _snapshot_human_gold(run, r)
        store.set_round(r, "training", m.to_dict())
        state = "training"
    if state == "training":
        m = _train_and_score(run, r, m)
        state = "scored"
    if state == "scored":
        _retrieve(run, r)
        state = "retrieved"
    if state == "retrieved":
        _judge(run, r)
        store.set_round(r, "judged")
        state = "judged"
    m = _finish_round(run, r, m)
    calls1, hits1 = _counters(run)
    m.calls_made += calls1 - calls0
    m.cache_hits += hits1 - hits0
    m.calls_this_run = calls1 - calls0
    store.set_round(r, "done", m.to_dict())
    run.log(m.summary())
    return m


def _snapshot_human_gold(run: _Run, r: int) -> None:
    """Human labels given so far become gold for this round (majority per pair, conflicts out)."""
    humans = list(run.annotations.gold_pairs())
    run.store.add_gold([replace(p, split="gold") for p in humans], r)
    if humans:
        run.log(f"round {r}: {len(humans)} human-labelled pairs join gold")


def _round_gold(run: _Run, r: int) -> list[PreferencePair]:
    """Input gold, then the human pairs snapshotted for this round."""
    return run.store.pairs("gold", round_added=0) + run.store.pairs("gold", round_added=r)


def _judge_silver(run: _Run, *, before: int | None = None) -> list[PreferencePair]:
    """Pool pairs judges labelled (in rounds before ``before``, if given) as silver pairs with
    provenance; pairs humans labelled are left out (they are gold)."""
    humans = run.store.human_gold_ids()
    pool = {p.id: p for p in run.store.pairs("pool")}
    out = []
    for d in run.store.decisions(labelled_by="judge", before=before):
        if d["pair_id"] in humans or d["pair_id"] not in pool:
            continue
        out.append(_silver_pair(run, pool[d["pair_id"]], d))
    return out


def _silver_pair(run: _Run, p: PreferencePair, d: dict[str, Any]) -> PreferencePair:
    """The pool pair in the judges' order (label "2" swaps), label_origin llm, with provenance."""
    label = d["label"]
    votes = [v for v in run.store.votes(p.id) if v["round"] == d["round"]]
    provenance = {"source": p.source, "original_label": "1", "original_label_origin": p.label_origin,
                  "original_labellers": list(p.labellers), "round": d["round"], "p": d["p"],
                  "labelled_by": "judge", "label": label, "per_judge": d["per_judge"],
                  "votes": [{k: v[k] for k in ("judge", "sample", "order", "better")} for v in votes],
                  "preference_attributes": run.store.attributes("pool", p.id)}
    swap = label == "2"
    return replace(p, chosen=p.rejected if swap else p.chosen, rejected=p.chosen if swap else p.rejected,
                   label_origin="llm", labellers=tuple(sorted(d["per_judge"])),
                   attributes={**p.attributes, "curation": provenance}, tie=label == "tie", split="train")


def _train_and_score(run: _Run, r: int, m: RoundMetrics) -> RoundMetrics:
    """Step 1 and the first half of 2: train on silver, score every gold pair with the best checkpoint."""
    from trainer.bt.metrics import pair_metrics
    from trainer.bt.train import train

    silver = run.store.pairs("silver") + _judge_silver(run, before=r)
    gold = _round_gold(run, r)
    rm_dir = run.out / f"round-{r}" / "rm"
    resume = (rm_dir / "last" / "state" / "trainer.json").is_file()
    run.log(f"round {r}: training on {len(silver)} silver pairs, checkpoint picked on {len(gold)} gold pairs"
            + (" (resumed)" if resume else ""))
    result = train(run.base, silver, gold, rm_dir, run.cfg, resume=resume,
                   notes={"curation_round": r, "out": str(run.out)})
    ps, chosen, rejected, longer = _gold_p(run, rm_dir / "best", gold)
    gm = pair_metrics(chosen, rejected, longer) if ps else {}
    m.gold_pairs, m.silver_pairs = len(ps), len(silver)
    m.human_gold = sum(1 for p in run.store.pairs("gold", round_added=r) if p.id in ps)
    m.gold_accuracy = gm.get("accuracy")
    m.gold_accuracy_length_balanced = gm.get("accuracy_length_balanced")
    m.train_steps, m.best_step = result.steps, result.best_step
    run.store.save_gold_p(r, ps, m.to_dict())
    return m


def _gold_p(run: _Run, best: Path, gold: Sequence[PreferencePair]
            ) -> tuple[dict[str, float], list[float], list[float], list[bool | None]]:
    """p per scorable gold pair (ties and responses over max_length left out), and the rewards."""
    import engine
    from engine.types import Item, sigmoid

    rows = [p for p in gold if not p.tie]
    items = [Item(p.conversation, x) for p in rows for x in (p.chosen, p.rejected)]
    with engine.load(best, format="torch", threads=run.cfg.threads, max_length=run.cfg.max_length) as rm:
        scores = rm.score(items, on_too_long="skip")
    ps: dict[str, float] = {}
    chosen, rejected, longer = [], [], []
    for i, p in enumerate(rows):
        c, w = scores[2 * i], scores[2 * i + 1]
        if c.skipped or w.skipped:
            continue
        ps[p.id] = sigmoid(c.value - w.value)
        chosen.append(c.value)
        rejected.append(w.value)
        longer.append(p.chosen_longer)
    return ps, chosen, rejected, longer


def _attributes(run: _Run, name: str, p: PreferencePair) -> Any:
    """The pair's attributes: stored, or generated by the first judge and stored (None: abstained)."""
    from trainer.curate.attributes import Attributes, generate_attributes

    held = run.store.attributes(name, p.id)
    if held is not None:
        return Attributes.from_dict(held)
    attrs = generate_attributes(run.judges[0], p)
    if attrs is not None:
        run.store.set_attributes(name, p.id, attrs.to_dict())
    return attrs


def _retrieve(run: _Run, r: int) -> None:
    """The second half of step 2: pool pairs near the gold pairs the RM gets wrong."""
    from engine.embed import cached_embed
    from trainer.curate.retrieval import NeighbourIndex, embedding_text, retrieve

    ps = run.store.gold_p(r)
    gold = {p.id: p for p in _round_gold(run, r) if p.id in ps}
    exclude = run.store.decided_before(r) | run.store.human_gold_ids()
    pool = [p for p in run.store.pairs("pool") if p.id not in exclude]
    rows: list[tuple[str, tuple[str, ...], float, int]] = []
    if pool and gold:
        run.log(f"round {r}: attributes for {len(gold)} gold pairs; embedding {len(pool)} pool pairs")
        gold_attrs = {gid: _attributes(run, "gold", p) for gid, p in gold.items()}
        emb = _embedder(run)
        gold_vecs = cached_embed(emb, [embedding_text(p, gold_attrs[gid]) for gid, p in gold.items()],
                                 run.embed_cache)
        pool_texts = [embedding_text(p, _stored_attributes(run, p.id)) for p in pool]
        index = NeighbourIndex.build(cached_embed(emb, pool_texts, run.embed_cache), [p.id for p in pool])
        found = retrieve([(gid, ps[gid]) for gid in gold], gold_vecs, index, exclude)
        rows = [(x.pool_id, tuple(_by_gold(x)), float(x.similarity), int(x.k)) for x in found]
    run.store.save_retrieved(r, rows)
    run.log(f"round {r}: retrieved {len(rows)} pool pairs for {len(gold)} gold pairs")


def _by_gold(x: Any) -> tuple[str, ...]:
    ids = getattr(x, "by_gold_ids", None)
    return tuple(ids) if ids is not None else (x.by_gold_id,)


def _stored_attributes(run: _Run, pair_id: str) -> Any:
    from trainer.curate.attributes import Attributes

    held = run.store.attributes("pool", pair_id)
    return Attributes.from_dict(held) if held is not None else None


def _judge(run: _Run, r: int) -> None:
    """Step 3: attributes, then the judges; each pair's decision is committed as it arrives
    (a rerun skips decided pairs; the call cache answers the questions of an interrupted one)."""
    from trainer.curate.prompts import Example
    from trainer.curate.verdicts import judge_pairs

    ps = run.store.gold_p(r)
    gold = {p.id: p for p in _round_gold(run, r)}
    pool = {p.id: p for p in run.store.pairs("pool")}
    done = run.store.decided(r)
    todo = [x for x in run.store.retrieved(r) if x[0] not in done]
    if not todo:
        return
    run.log(f"round {r}: attributes and verdicts for {len(todo)} pairs ({len(done)} judged before)")
    items = []
    for pid, by, _sim, _k in todo:
        examples = [Example(gold[g], _gold_attributes(run, g), "1") for g in by[:MAX_EXAMPLES] if g in gold]
        items.append((pool[pid], _attributes(run, "pool", pool[pid]), examples))

    def record(i: int, v: Any) -> None:
        pid, by = todo[i][0], todo[i][1]
        votes = [(x.judge, x.sample, x.order, x.better) for x in v.votes]
        run.store.record_decision(pid, r, min(ps.get(g, 1.0) for g in by), v.label, votes, dict(v.per_judge))
        run.log(f"round {r}: {pid}: {v.label or 'abstain'}")

    judge_pairs(run.judges, items, samples=run.samples, seed=run.seed, concurrency=run.concurrency,
                on_verdict=record)


def _gold_attributes(run: _Run, gid: str) -> Any:
    from trainer.curate.attributes import Attributes

    held = run.store.attributes("gold", gid)
    return Attributes.from_dict(held) if held is not None else None


def _finish_round(run: _Run, r: int, m: RoundMetrics) -> RoundMetrics:
    """Step 4 and the round's figures: queue the human share, count, compare with humans."""
    retrieved = run.store.retrieved(r)
    decisions = {d["pair_id"]: d for d in run.store.decisions() if d["round"] == r and d["labelled_by"] != "human"}
    m.retrieved = len(retrieved)
    m.judged = sum(1 for pid, *_ in retrieved if pid in decisions)
    m.labelled = sum(1 for d in decisions.values() if d["labelled_by"] == "judge")
    m.abstained = sum(1 for d in decisions.values() if d["labelled_by"] == "abstain")
    m.queued_for_humans = _queue_for_humans(run, r, retrieved, decisions)
    m.judge_agreement = _judge_agreement(decisions.values(), len(run.judges))
    m.order_agreement = _order_agreement(run, r, [j.name for j in run.judges])
    m.judge_vs_human, m.judge_vs_human_pairs = _judge_vs_human(run)
    return m


def _queue_for_humans(run: _Run, r: int, retrieved: Sequence[tuple[str, tuple[str, ...], float, int]],
                      decisions: dict[str, dict[str, Any]]) -> int:
    """At most ``human_share`` of the retrieved pairs, objective and low-controversy ones only, in
    the queue's priority order. The queue ignores pairs it holds, so a rerun adds nothing."""
    from trainer.curate.attributes import queue_priority

    budget = math.ceil(run.human_share * len(retrieved))
    pool = {p.id: p for p in run.store.pairs("pool")}
    picked = []
    for pid, *_ in retrieved:
        attrs = _stored_attributes(run, pid)
        if attrs is None or attrs.objectivity != "objective" or attrs.controversiality != "low":
            continue
        p = decisions.get(pid, {}).get("p")
        picked.append((pool[pid], attrs, (*queue_priority(attrs), r, p if p is not None else 1.0)))
    picked.sort(key=lambda x: x[2])
    picked = picked[:budget]
    if picked:
        run.annotations.enqueue(picked, run.overlap)
    return len(picked)


def _judge_agreement(decisions: Any, n_judges: int) -> float | None:
    """Share of pairs where every judge answered and all gave the same label; None with one judge."""
    if n_judges < 2:
        return None
    answered = [d["per_judge"] for d in decisions
                if len(d["per_judge"]) == n_judges and None not in d["per_judge"].values()]
    if not answered:
        return None
    return sum(len(set(pj.values())) == 1 for pj in answered) / len(answered)


def _order_agreement(run: _Run, r: int, names: Sequence[str]) -> dict[str, float | None]:
    """Per judge: of the (pair, sample) it answered in both orders, the share where the orders agree."""
    answers: dict[tuple[str, str, int], dict[str, str | None]] = defaultdict(dict)
    for v in run.store.votes():
        if v["round"] == r:
            answers[v["judge"], v["pair_id"], v["sample"]][v["order"]] = v["better"]
    out: dict[str, float | None] = {}
    for name in names:
        both = [a for (j, _, _), a in answers.items()
                if j == name and a.get("ab") is not None and a.get("ba") is not None]
        out[name] = sum(a["ab"] == a["ba"] for a in both) / len(both) if both else None
    return out


def _judge_vs_human(run: _Run) -> tuple[float | None, int]:
    """Share of pairs with a judge label and a human majority label (not both_bad) that agree."""
    from trainer.curate.annotations import majority

    given: dict[str, list[str]] = defaultdict(list)
    for row in run.annotations.human_labels():
        given[row.pair_id].append(row.label)
    human = {pid: majority(labels) for pid, labels in given.items()}
    judge = {d["pair_id"]: d["label"] for d in run.store.decisions(labelled_by="judge")}
    both = [(judge[pid], h) for pid, h in human.items() if pid in judge and h is not None and h != "both_bad"]
    if not both:
        return None, 0
    return sum(a == b for a, b in both) / len(both), len(both)


def label_counts(metrics: Sequence[RoundMetrics]) -> dict[str, int]:
    """Totals over rounds (the CLI's last line)."""
    c: Counter[str] = Counter()
    for m in metrics:
        c.update(retrieved=m.retrieved, labelled=m.labelled, abstained=m.abstained,
                 queued_for_humans=m.queued_for_humans, calls_this_run=m.calls_this_run)
    return dict(c)
