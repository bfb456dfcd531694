"""Token estimates: how far chars/4 is from OpenAI's encodings, and what the exact count costs.

``pgcache.tokens`` counts answers that arrive without the API's ``usage`` (FAQ answers warmed
from a file): exactly, with o200k_base or cl100k_base, when bpe-openai is installed (the
``tokens`` extra), else as ceil(characters / 4). This script measures the approximation against
both encodings on the questions and answers of examples/faqs.tsv and, when the evaluation data
is beside the checkout, on the Banking77 and CLINC150 texts; the error of whole FAQ entries'
usage as pgcache would store it; the exact count's speed; and what loading an encoding costs in
a fresh process. Writes docs/token-estimates.md.

Usage: python -m benchmarks.token_estimates [--eval-dir PATH] [--output PATH] [--toy]

The evaluation data is read by path (shared/eval/README.md); it is not part of this repository.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

from pgcache import tokens
from pgcache.warm import parse, read_text

from .harness import machine

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO.parent / "shared" / "eval"
FAQ = REPO / "examples" / "faqs.tsv"
MODELS = {tokens.O200K: "gpt-4o-mini", tokens.CL100K: "gpt-4"}
"""One model per encoding, for pgcache.tokens to pick the encoding from."""
EVAL_FILES = {
    "Banking77 queries": ("banking77", ("train.csv", "test.csv")),
    "CLINC150 queries": ("clinc150", ("train.csv", "val.csv", "test.csv")),
}
TOY_ROWS = 200
"""Rows per evaluation file in the test suite's --toy run."""
REPEATS = 3

# Timed in a fresh interpreter: importing pgcache.tokens, the first count with each encoding (importing
# bpe-openai and loading the encoding), and the resident memory before and after.
LOAD_PROBE = """
import json, sys, time
def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
start = time.perf_counter()
from pgcache.tokens import count_tokens
imported, before, eager = time.perf_counter(), rss(), "bpe_openai" in sys.modules
count_tokens("warm", "gpt-4o-mini")
first = time.perf_counter()
count_tokens("warm", "gpt-4")
second = time.perf_counter()
print(json.dumps({"import": imported - start, "o200k": first - imported, "cl100k": second - first,
                  "rss_before": before, "rss_after": rss(), "eager": eager}))
"""


@dataclass
class Texts:
    """One data set: its name, where it came from, and its non-empty texts."""

    name: str
    source: str
    texts: list[str]


def faq_entries() -> list[tuple[str, str]]:
    items, errors = parse(FAQ, read_text(FAQ), "tsv")
    if errors:
        raise SystemExit(f"{FAQ}: {errors[0]}")
    return [(item.prompt, item.response or "") for item in items]


def eval_texts(eval_dir: Path, limit: int | None) -> list[Texts]:
    found = []
    for name, (folder, files) in EVAL_FILES.items():
        texts: list[str] = []
        for file in files:
            with (eval_dir / folder / file).open(newline="", encoding="utf-8") as f:
                texts += [row["text"] for row in list(csv.DictReader(f))[:limit] if row["text"].strip()]
        found.append(Texts(name, f"`{folder}/` {', '.join(files)}", texts))
    return found


def errors_against(real: np.ndarray, approx: np.ndarray) -> dict[str, float]:
    """Relative error of the approximation per text, (approx − real) / real, summarised."""
    relative = (approx - real) / real
    return {
        "bias": float(relative.mean()),
        "mean": float(np.abs(relative).mean()),
        "p90": float(np.percentile(np.abs(relative), 90)),
        "ratio": float(approx.sum() / real.sum()),
    }


def compare(data: Texts, encoding: str) -> dict[str, object]:
    count = tokens.counter(MODELS[encoding]).count
    real = np.array([count(text) for text in data.texts], dtype=float)
    approx = np.array([tokens.approximate(text) for text in data.texts], dtype=float)
    return {"texts": len(data.texts), "tokens": float(real.mean()), **errors_against(real, approx)}


def compare_entries(entries: list[tuple[str, str]], encoding: str) -> dict[str, dict[str, float]]:
    """The usage pgcache would store for each FAQ entry (the question as one user message), both ways."""
    model = MODELS[encoding]
    real = [tokens.estimate_usage(model, [{"role": "user", "content": q}], a) for q, a in entries]
    approx = [tokens.estimate_usage(model, [{"role": "user", "content": q}], a, real=False) for q, a in entries]
    return {
        part: errors_against(
            np.array([getattr(e, part) for e in real], dtype=float),
            np.array([getattr(e, part) for e in approx], dtype=float),
        )
        for part in ("prompt_tokens", "completion_tokens", "total_tokens")
    }


def speed(texts: list[str], model: str, *, real: bool) -> dict[str, float]:
    """Texts and tokens a second through ``count_tokens``, best of :data:`REPEATS` passes."""
    tokens.count_tokens("warm", model, real=real)
    best, counted = float("inf"), 0
    for _ in range(REPEATS):
        start = time.perf_counter()
        counted = sum(tokens.count_tokens(text, model, real=real)[0] for text in texts)
        best = min(best, time.perf_counter() - start)
    return {"texts_s": len(texts) / best, "tokens_s": counted / best, "us": best / len(texts) * 1e6}


def load_costs() -> dict[str, float]:
    """Medians over :data:`REPEATS` fresh interpreters."""
    runs = []
    for _ in range(REPEATS):
        done = subprocess.run(
            [sys.executable, "-c", LOAD_PROBE], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
        )
        runs.append(json.loads(done.stdout))
    costs = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "eager"}
    if any(run["eager"] for run in runs):
        sys.exit("importing pgcache.tokens imported bpe-openai: the encodings are meant to load on first use")
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.token_estimates", description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dir", type=Path, default=EVAL)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "token-estimates.md")
    parser.add_argument("--toy", action="store_true", help=f"the test suite's run: {TOY_ROWS} rows per evaluation file")
    args = parser.parse_args(argv)
    if tokens.counter("gpt-4o-mini").name != tokens.O200K:
        sys.exit("bpe-openai is not installed: pip install -e '.[tokens]'; nothing to compare chars/4 with")
    started = time.perf_counter()
    entries = faq_entries()
    data = [
        Texts("FAQ questions", "`examples/faqs.tsv`", [q for q, _ in entries]),
        Texts("FAQ answers", "`examples/faqs.tsv`", [a for _, a in entries if a]),
    ]
    if (args.eval_dir / "banking77").is_dir() and (args.eval_dir / "clinc150").is_dir():
        data += eval_texts(args.eval_dir, TOY_ROWS if args.toy else None)
        print(f"evaluation data: {args.eval_dir}")
    else:
        print(f"evaluation data not found in {args.eval_dir} (see shared/eval/README.md): FAQ texts only")
    results = {(d.name, enc): compare(d, enc) for d in data for enc in MODELS}
    usage = {enc: compare_entries(entries, enc) for enc in MODELS}
    every_text = [text for d in data for text in d.texts]
    speeds = {enc: speed(every_text, model, real=True) for enc, model in MODELS.items()}
    speeds[tokens.APPROXIMATION] = speed(every_text, "gpt-4o-mini", real=False)
    loads = load_costs()
    report = render(data, results, usage, speeds, loads, args, time.perf_counter() - started)
    args.output.write_text(report, encoding="utf-8")
    print(report)
    print(f"wrote {args.output}")
    return 0


def _pct(value: float) -> str:
    return f"{100 * value:+.1f}%" if value < 0 else f"{100 * value:.1f}%"


def render(data, results, usage, speeds, loads, args, seconds: float) -> str:
    env = machine()
    try:
        bpe_version = metadata.version("bpe-openai")
    except metadata.PackageNotFoundError:
        bpe_version = "not installed"
    every = sum(len(d.texts) for d in data)
    lines = [
        "# Token estimates",
        "",
        "_Generated by `python -m benchmarks.token_estimates`"
        + (" --toy (a smoke run: these numbers are not the results)" if args.toy else "")
        + "; rerun it rather than editing this file._",
        "",
        "## Which estimator pgcache uses when",
        "",
        "- **The response carries `usage`** (OpenAI's API reports it on every call that is not streamed, and on a "
        "stream asked for it with `stream_options.include_usage`): pgcache keeps the API's own counts. Nothing is "
        "estimated.",
        "- **The answer arrives without `usage`** (FAQ answers warmed from a file, answer text given to "
        "`Cache.store`, a stream without `include_usage`, an upstream that reports none): "
        "`pgcache.tokens.estimate_usage` estimates it, and every estimate names its estimator:",
        "  - with the `tokens` extra installed (`pip install 'pgcache[tokens]'`, which brings bpe-openai and OpenAI's "
        "vocabularies inside its wheel): **`o200k_base`** for gpt-4o\\*, gpt-4.1\\*, gpt-4.5\\*, gpt-5\\*, o1\\*, "
        "o3\\*, o4\\*, chatgpt-4o\\* and, as the nearest stand-in, any model it does not know; **`cl100k_base`** for "
        "gpt-4, gpt-4-turbo, gpt-3.5\\*, text-embedding-3-\\* and text-embedding-ada-002. A text counts exactly as "
        "OpenAI's tokenizer counts it, computed offline; nothing is downloaded at run time. For a model that is not "
        "OpenAI's, the count is o200k_base's, not that model's tokenizer's.",
        "  - without it: **`chars/4`**, a quarter of the characters rounded up.",
        "- Prompt tokens are counted as OpenAI's cookbook counts a chat request: each message's role, text content "
        "and `name`, plus 3 tokens per message, 1 per `name` and 3 to prime the reply; images, audio and tool calls "
        "are not counted. Its example conversation comes to 129 tokens on cl100k_base and 124 on o200k_base, the "
        "API's own figures (a test checks both); OpenAI documents this overhead for the gpt-3.5, gpt-4 and gpt-4o "
        "families, and a newer model's figure may differ by a token. Tool definitions are not counted either. "
        "Completion tokens are the answer's; an empty answer is 0.",
        "",
        "## Method",
        "",
        f"- Data: {', '.join(f'{d.name} ({len(d.texts):,} texts, {d.source})' for d in data)}"
        + (
            f". The evaluation data was read from `{os.path.relpath(args.eval_dir, REPO)}` by path and is not part "
            "of the repository."
            if len(data) > 2
            else ". The evaluation data (shared/eval) was not found, so only the FAQ file was measured."
        ),
        "- Per text: relative error = (chars/4 − exact) / exact. **Bias** is its mean (negative: chars/4 counts "
        "too few); **mean** and **p90** are the mean and 90th percentile of its absolute value; **total ratio** is "
        "the sum of the chars/4 counts over the sum of the exact ones, what a report totalling many entries sees.",
        "- Exact counts: `pgcache.tokens.counter(model)` with gpt-4o-mini (o200k_base) and gpt-4 (cl100k_base), "
        f"bpe-openai {bpe_version}.",
        "",
        "## chars/4 against the exact counts",
        "",
        "| data | encoding | texts | exact tokens per text | bias | mean error | p90 error | total ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in data:
        for enc in MODELS:
            r = results[(d.name, enc)]
            lines.append(
                f"| {d.name} | {enc} | {r['texts']:,} | {r['tokens']:.1f} | {_pct(r['bias'])} | {_pct(r['mean'])} "
                f"| {_pct(r['p90'])} | {r['ratio']:.3f} |"
            )
    lines += [
        "",
        f"Whole FAQ entries ({len(data[0].texts)} from `examples/faqs.tsv`, the question as one user message), "
        "the usage pgcache would store, chars/4 against exact:",
        "",
        "| encoding | part | bias | mean error | p90 error | total ratio |",
        "|---|---|---|---|---|---|",
    ]
    for enc, parts in usage.items():
        for part, r in parts.items():
            lines.append(
                f"| {enc} | {part} | {_pct(r['bias'])} | {_pct(r['mean'])} | {_pct(r['p90'])} | {r['ratio']:.3f} |"
            )
    lines += ["", _reading(data, results, usage), "", "## Speed and cost", ""]
    lines += [
        f"`count_tokens` over all {every:,} texts above, one call per text, best of {REPEATS} passes on one thread:",
        "",
        "| estimator | texts/s | tokens/s | µs per text |",
        "|---|---|---|---|",
    ]
    for name, s in speeds.items():
        lines.append(f"| {name} | {s['texts_s']:,.0f} | {s['tokens_s']:,.0f} | {s['us']:.1f} |")
    lines += [
        "",
        f"Loading, in a fresh interpreter (median of {REPEATS}): `from pgcache.tokens import count_tokens` "
        f"{1e3 * loads['import']:.0f} ms (the pgcache package; bpe-openai is not imported yet); the first count "
        f"with o200k_base {loads['o200k']:.2f} s (importing bpe-openai, which reads all its bundled vocabularies "
        f"at import, and loading the encoding); the first with cl100k_base after it {1e3 * loads['cl100k']:.0f} "
        f"ms. Resident memory grew from {loads['rss_before']:.0f} MB to {loads['rss_after']:.0f} MB. Each "
        "encoding is loaded once per process, on first use, so a process "
        "that never estimates (every answer came with `usage`) pays none of this.",
        "",
        "## Run",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {seconds:.0f} s in all.",
        "",
        "| what | value |",
        "|---|---|",
    ]
    for key in ("cpu", "cores", "memory", "os", "python"):
        lines.append(f"| {key} | {env[key]} |")
    lines.append(f"| bpe-openai | {bpe_version} |")
    return "\n".join(lines) + "\n"


def _reading(data, results, usage) -> str:
    """What the tables say, in numbers taken from them."""
    ratios = [r["ratio"] for r in results.values()]
    p90s = [r["p90"] for r in results.values()]
    total = usage[tokens.O200K]["total_tokens"]
    return (
        f"Across these data sets chars/4 totals {min(ratios):.2f}–{max(ratios):.2f}× the exact count, and one text "
        f"in ten is off by more than {100 * min(p90s):.0f}–{100 * max(p90s):.0f}%. On the FAQ entries' stored totals "
        f"(o200k_base) it is off by {100 * total['mean']:.0f}% on average ({100 * total['p90']:.0f}% at the 90th "
        "percentile). chars/4 is a fallback for a rough total, not a per-entry figure; with the `tokens` extra "
        "installed every estimate is the exact count of the texts."
    )


if __name__ == "__main__":
    sys.exit(main())
