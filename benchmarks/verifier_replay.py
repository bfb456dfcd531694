"""The learned verifier on the FAQ replays: the section of docs/semantic-quality.md that faq_replay.py adds.

Four ways of deciding a semantic hit, on the same replays:

* cosine only, and cosine + the guard's default rules (the nearest phrasing, as before);
* cosine + the default verifier (trained by ``train_default_verifier.py`` on other data: cross-domain);
* cosine + a verifier trained on the replay's own train split (in-domain): Banking77 train pairs for the
  Banking77 replays, CLINC150 train pairs for CLINC150, PAWS dev for PAWS test.

With a verifier, the nearest :data:`TOP` cached phrasings from cosine :data:`FLOOR` up are scored and the
nearest whose probability reaches the threshold is served.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from pgcache import guard
from pgcache.crossencoder import CrossEncoder, TrainingOptions

from .verifier_data import FLOOR, TOP, Replay, Vectors, best_at_goal, cached_verifier, latency, training_pairs

RECIPE = TrainingOptions(kind="full", learning_rate=5e-5, batch_size=32)
"""The recipe docs/verifier-recipes.md found the most accurate (pgcache's default)."""
IN_DOMAIN_PAIRS = 20_000
"""Training pairs of the in-domain verifiers (the replay's train split gives about 28,000)."""
PROBABILITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)
COSINES = tuple(np.round(np.arange(0.70, 0.995, 0.005), 3))
SCAN = tuple(np.round(np.arange(0.30, 0.995, 0.005), 3))


@dataclass
class PawsSet:
    """PAWS test pairs: each pair is a candidate; a served pair is right when it is a paraphrase."""

    pairs: list[tuple[str, str]]
    sims: np.ndarray
    right: np.ndarray

    def served(self, probabilities: np.ndarray, threshold: float) -> tuple[float, float]:
        hit = (self.sims >= FLOOR) & (probabilities >= threshold)
        return _recall(hit, self.right)

    def cosine(self, threshold: float, rules: bool = False) -> tuple[float, float]:
        hit = self.sims >= threshold
        if rules:
            chosen = guard.select(guard.DEFAULT_RULES)
            hit &= np.array([guard.rejects(a, b, chosen) is None for a, b in self.pairs])
        return _recall(hit, self.right)


def _recall(hit: np.ndarray, right: np.ndarray) -> tuple[float, float]:
    served = int(hit.sum())
    return float((hit & right).sum() / right.sum()), (float((hit & ~right).sum()) / served if served else 0.0)


def guarded(test: Replay, threshold: float) -> tuple[int, int]:
    """(right, wrong) hits of cosine + the guard's default rules on the nearest phrasing."""
    rules = guard.select(guard.DEFAULT_RULES)
    right = wrong = 0
    for qi, query in enumerate(test.queries):
        if test.sims[qi, 0] < threshold:
            continue
        if guard.rejects(query["text"], test.cache[test.neighbours[qi, 0]]["text"], rules) is not None:
            continue
        right += int(test.right[qi, 0])
        wrong += int(not test.right[qi, 0])
    return right, wrong


def rates(right_wrong: tuple[int, int], queries: int) -> tuple[float, float]:
    right, wrong = right_wrong
    return right / queries, (wrong / (right + wrong) if right + wrong else 0.0)


def replay_figures(test: Replay, verifiers: dict[str, CrossEncoder], calibrated: dict[str, float | None]) -> dict:
    """Best operating points at <= 2% wrong, the point at each verifier's calibrated threshold, and the
    probability table, for one replay."""
    n = len(test.queries)
    figures: dict = {
        "cosine only": best_at_goal([(t, *rates(test.cosine(t), n)) for t in COSINES]),
        "cosine + guard": best_at_goal([(t, *rates(guarded(test, t), n)) for t in COSINES]),
        "table": {},
        "calibrated": {},
    }
    pairs, where = test.pairs()
    for name, encoder in verifiers.items():
        grid = test.grid(encoder.score(pairs, batch_size=64), where)
        figures[name] = best_at_goal([(t, *rates(test.served(grid, t), n)) for t in SCAN])
        figures["table"][name] = [(t, *rates(test.served(grid, t), n)) for t in PROBABILITIES]
        threshold = calibrated.get(name)
        figures["calibrated"][name] = (
            None if threshold is None else (threshold, *rates(test.served(grid, threshold), n))
        )
    return figures


def paws_figures(paws: PawsSet, verifiers: dict[str, CrossEncoder], calibrated: dict[str, float | None]) -> dict:
    figures: dict = {
        "cosine only": _paws_points([(t, *paws.cosine(t)) for t in COSINES]),
        "cosine + guard": _paws_points([(t, *paws.cosine(t, rules=True)) for t in COSINES]),
        "table": {},
        "calibrated": {},
    }
    for name, encoder in verifiers.items():
        scores = encoder.score(paws.pairs, batch_size=64)
        points = [(t, *paws.served(scores, t)) for t in SCAN]
        figures[name] = _paws_points(points)
        figures["table"][name] = [(t, *paws.served(scores, t)) for t in PROBABILITIES]
        threshold = calibrated.get(name)
        figures["calibrated"][name] = None if threshold is None else (threshold, *paws.served(scores, threshold))
    return figures


def _paws_points(points: list[tuple[float, float, float]]) -> dict:
    """PAWS operating points: the best recall at <= 2% wrong, and the lowest wrong share at >= 50% recall."""
    half = [p for p in points if p[1] >= 0.5]
    return {"at_goal": best_at_goal(points), "at_half_recall": min(half, key=lambda p: p[2]) if half else None}


def in_domain(
    name: str, vec: Vectors, train_rows: list[dict[str, str]], limit: int, toy: bool
) -> tuple[CrossEncoder, dict]:
    options = TrainingOptions(kind="lora", learning_rate=1e-3, epochs=1) if toy else RECIPE
    return cached_verifier(name, lambda: training_pairs(vec, train_rows, 5, limit), options)


def paws_verifier(dev_rows: list[dict[str, str]], limit: int, toy: bool) -> tuple[CrossEncoder, dict]:
    def pairs():
        rows = [r for r in dev_rows if r["a"] != r["b"]]
        random.Random(0).shuffle(rows)
        return [(r["a"], r["b"]) for r in rows[:limit]], [int(r["label"]) for r in rows[:limit]]

    options = TrainingOptions(kind="lora", learning_rate=1e-3, epochs=1) if toy else RECIPE
    return cached_verifier("paws-dev", pairs, options)


def latencies(verifiers: dict[str, CrossEncoder], pairs: list[tuple[str, str]]) -> dict[str, dict]:
    return {name: latency(encoder, pairs) for name, encoder in verifiers.items()}


def cell(point) -> str:
    """A replay's best point: right-hit rate, wrong share and threshold."""
    if point is None:
        return "none at ≤ 2% wrong"
    return f"**{100 * point[1]:.1f}%** at {100 * point[2]:.1f}% wrong ({point[0]:.3f})"


def paws_cell(points: dict) -> str:
    half, goal = points["at_half_recall"], points["at_goal"]
    first = "–" if half is None else f"**{100 * half[2]:.1f}%** wrong at {100 * half[1]:.0f}% recall ({half[0]:.3f})"
    second = "none" if goal is None else f"{100 * goal[1]:.1f}% recall at {100 * goal[2]:.1f}% wrong ({goal[0]:.3f})"
    return f"{first}; at ≤ 2% wrong: {second}"


def at_goal_rate(point) -> float:
    return 0.0 if point is None else point[1]


def section(eval_dir, *, toy: bool, quick: bool, log=print) -> tuple[str, str]:
    """The learned verifier's verdict (for "Goal and verdict") and its section of docs/semantic-quality.md."""
    import time

    from .verifier_data import read_csv, replay

    started = time.perf_counter()
    nq, ntrain, npaws = (40, 600, 60) if toy else (300, None, 500) if quick else (None, None, None)

    def rows(path, limit):
        # Toy runs take a seeded sample: the files are grouped by intent, so their first rows hold a few intents only.
        every = read_csv(eval_dir / path)
        if not toy or limit is None:
            return every[:limit]
        keep = sorted(random.Random(0).sample(range(len(every)), min(limit, len(every))))
        return [every[i] for i in keep]

    b77_train, b77_test = rows("banking77/train.csv", ntrain), rows("banking77/test.csv", nq)
    clinc_train, clinc_test = rows("clinc150/train.csv", ntrain), rows("clinc150/test.csv", nq)
    paws_dev, paws_test = rows("paws_wiki/dev.csv", npaws), rows("paws_wiki/test.csv", npaws)
    limit = 120 if toy else IN_DOMAIN_PAIRS
    b77, clinc, paws_vec = Vectors("banking77"), Vectors("clinc150"), Vectors("paws")
    log("learned verifiers: in-domain Banking77, CLINC150, PAWS dev; the default one")
    b77_verifier, b77_facts = in_domain("b77-full", b77, b77_train, limit, toy)
    clinc_verifier, clinc_facts = in_domain("clinc-full", clinc, clinc_train, limit, toy)
    paws_in, paws_facts = paws_verifier(paws_dev, 120 if toy else 8_000, toy)
    default, default_facts = (None, {}) if toy else default_verifier(eval_dir, log)
    replays = {}
    for name, vec, train_rows, test_rows, own, facts in (
        ("Banking77 K=1", b77, b77_train, b77_test, b77_verifier, b77_facts),
        ("Banking77 K=5", b77, b77_train, b77_test, b77_verifier, b77_facts),
        ("CLINC150 K=1", clinc, clinc_train, clinc_test, clinc_verifier, clinc_facts),
        ("CLINC150 K=5", clinc, clinc_train, clinc_test, clinc_verifier, clinc_facts),
    ):
        k = int(name[-1])
        verifiers = {"in-domain verifier": own} | ({"default verifier": default} if default else {})
        calibrated = {
            "in-domain verifier": facts.get("calibrated"),
            "default verifier": default_facts.get("calibrated"),
        }
        replays[name] = replay_figures(replay(name, vec, train_rows, test_rows, k), verifiers, calibrated)
        log(f"  {name}: {replays[name]['cosine only']} -> {replays[name]['in-domain verifier']}")
    rows = [r for r in paws_test if r["a"] != r["b"]]
    a, b = paws_vec([r["a"] for r in rows]), paws_vec([r["b"] for r in rows])
    paws = PawsSet(
        [(r["a"], r["b"]) for r in rows], np.einsum("ij,ij->i", a, b), np.array([r["label"] == "1" for r in rows])
    )
    paws_verifiers = {"in-domain verifier": paws_in} | ({"default verifier": default} if default else {})
    paws_result = paws_figures(
        paws,
        paws_verifiers,
        {"in-domain verifier": paws_facts.get("calibrated"), "default verifier": default_facts.get("calibrated")},
    )
    b5 = replay("Banking77 K=5", b77, b77_train, b77_test, 5)
    timing = latencies(
        {"in-domain (Banking77)": b77_verifier} | ({"default": default} if default else {}), b5.pairs()[0]
    )
    return _verdict(replays, paws_result, timing, default is not None), _section(
        replays, paws_result, timing, time.perf_counter() - started, default is not None
    )


def default_verifier(eval_dir, log) -> tuple[CrossEncoder, dict]:
    """The default verifier train_default_verifier.py trained (from its disk cache, or trained now)."""
    from .train_default_verifier import default_pairs
    from .verifier_data import Vectors as _Vectors

    vec = _Vectors("default")
    options = TrainingOptions(kind="full", learning_rate=5e-5, batch_size=32)
    return cached_verifier("default", lambda: default_pairs(eval_dir, vec, 12_000), options, log)


GOALS = {"Banking77 K=5": 0.50, "CLINC150 K=5": 0.30}


def _verdict(replays: dict, paws: dict, timing: dict, default: bool) -> str:
    lines = ["", "**The learned verifier** (goals for a verifier trained on the deployment's own labels):", ""]
    for name, goal in GOALS.items():
        got = at_goal_rate(replays[name]["in-domain verifier"])
        lines.append(
            f"- {name}: {100 * got:.1f}% right hits at ≤ 2% wrong share in-domain (goal ≥ {100 * goal:.0f}%, "
            f"cosine alone {100 * at_goal_rate(replays[name]['cosine only']):.1f}%): "
            f"**{'met' if got >= goal else 'not met'}**."
        )
    half = paws["in-domain verifier"]["at_half_recall"]
    paws_ok = half is not None and half[2] <= 0.15
    lines.append(
        "- PAWS test: "
        + (
            "no operating point reaches 50% recall"
            if half is None
            else f"{100 * half[2]:.1f}% of served pairs wrong at {100 * half[1]:.0f}% recall"
        )
        + f" (goal ≤ 15% at ≥ 50%): **{'met' if paws_ok else 'not met'}**."
    )
    if default:
        point = replays["Banking77 K=5"]["default verifier"]
        got = at_goal_rate(point)
        base = at_goal_rate(replays["Banking77 K=5"]["cosine only"])
        shown = "no operating point at ≤ 2% wrong" if point is None else f"{100 * got:.1f}% right hits"
        lines.append(
            f"- Default (cross-domain) verifier on Banking77 K=5: {shown}, against {100 * base:.1f}% "
            f"for cosine alone (goal ≥ 3×): **{'met' if base and got >= 3 * base else 'not met'}**."
        )
    p50 = timing["in-domain (Banking77)"]["p50"]
    lines.append(
        f"- Scoring: {p50:.1f} ms p50 per candidate (goal ≤ 10 ms): **{'met' if p50 <= 10 else 'not met'}**; "
        "a lookup that needs no verification (an exact hit, or no verifier trained) runs none of it."
    )
    return "\n".join(lines) + "\n"


def _section(replays: dict, paws: dict, timing: dict, seconds: float, default: bool) -> str:
    columns = ["cosine only", "cosine + guard", *(["default verifier"] if default else []), "in-domain verifier"]
    lines = [
        "## The learned verifier",
        "",
        "A cross-encoder (the bundled all-MiniLM-L6-v2 fine-tuned with a one-logit head, "
        "docs/verifier-recipes.md) reads the new and the cached question together. The "
        f"{TOP} nearest cached phrasings from cosine {FLOOR} up are scored in one batch and the nearest whose "
        "probability reaches the threshold is served. *In-domain*: trained on the replay's own train split "
        "(train phrasings outside the cache with their nearest cached phrasings; PAWS dev for PAWS); *default*: "
        "trained on other data only (docs/default-verifier.md). Each cell: the most right hits (share of queries) "
        "with at most 2% of hits wrong, the wrong share there and the threshold (cosine or probability).",
        "",
        "| replay | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, figures in replays.items():
        lines.append(f"| {name} | " + " | ".join(cell(figures[c]) for c in columns) + " |")
    lines.append("| PAWS test | " + " | ".join(paws_cell(paws[c]) for c in columns) + " |")
    lines += [
        "",
        "The thresholds above are the best for each test set, as a reader tuning on their own traffic would "
        "find them. What `pgcache verifier train` itself chooses (the lowest probability whose precision on "
        "the held-out 20% of the training pairs reaches 0.98 at the 95% lower bound), on the same tests:",
        "",
        "| replay | verifier | calibrated threshold | right hits | wrong share of hits |",
        "|---|---|---|---|---|",
    ]
    for name, figures in [*replays.items(), ("PAWS test", paws)]:
        for verifier, point in figures["calibrated"].items():
            if point is not None:
                lines.append(
                    f"| {name} | {verifier} | {point[0]:.3f} | {100 * point[1]:.1f}% | {100 * point[2]:.1f}% |"
                )
    lines.append("")
    lines.append("(For PAWS: recall and the wrong share of served pairs.)")
    lines += [
        "",
        "PAWS cells: the lowest wrong share of served pairs at 50% recall or more, then the best recall "
        "with at most 2% wrong.",
        "",
        "### By probability threshold",
        "",
        "Right-hit rate / wrong share of hits (PAWS: recall / wrong share of served pairs), in percent.",
    ]
    for name, figures in [*replays.items(), ("PAWS test", paws)]:
        names = list(figures["table"])
        lines += ["", f"**{name}**", "", "| probability | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for i, p in enumerate(PROBABILITIES):
            lines.append(
                f"| {p:.2f} | "
                + " | ".join(
                    f"{100 * figures['table'][n][i][1]:.1f} / {100 * figures['table'][n][i][2]:.1f}" for n in names
                )
                + " |"
            )
    lines += [
        "",
        "### Scoring time",
        "",
        "A lookup's candidates scored in one batch on 2 CPU cores, per candidate:",
        "",
        "| verifier | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    for name, t in timing.items():
        lines.append(f"| {name} | {t['p50']:.1f} | {t['p99']:.1f} |")
    lines += ["", f"This section: {seconds / 60:.0f} min (trained verifiers are cached in `.bench-cache/`).", ""]
    return "\n".join(lines)
