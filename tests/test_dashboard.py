"""The dashboard of ``pgcache serve`` in a real headless Chromium: it loads without console errors
and its figures are those of the SQL views.

Set ``PGCACHE_SCREENSHOT=docs/dashboard.png`` to keep the page as a screenshot.
"""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import subprocess

import openai
import pytest

from .conftest import TEST_API_KEY, query
from .test_server import ADMIN_TOKEN, PARAPHRASE, QUESTION, serving

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(html.parser.HTMLParser):
    """Text by element id, and the rows of each table, from the DOM Chromium dumps."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self.attributes: dict[str, dict[str, str | None]] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._open: list[str | None] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        named = dict(attrs)
        self.attributes[tag] = named if tag == "body" else self.attributes.get(tag, {})
        self._open.append(named.get("id"))
        if tag == "table":
            self._table = named.get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if self._open:
            self._open.pop()
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        for element in self._open:
            if element:
                self.ids[element] = self.ids.get(element, "") + data


def chromium(url: str, *extra: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--window-size=1280,1500", *extra, url,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture
def populated(database_url, llm, fake):
    """A server whose ledger holds misses, exact and semantic hits, a near miss and a wrong-hit report."""
    with serving(database_url, llm, fake, admin_token=ADMIN_TOKEN) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key=TEST_API_KEY, max_retries=0)

        def ask(messages, **headers):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages, extra_headers=headers
            )
            return raw.headers

        ask(QUESTION)
        for _ in range(3):
            ask(QUESTION)
        semantic = ask(PARAPHRASE)
        assert semantic["x-pgcache-status"] == "semantic"
        similarity = float(semantic["x-pgcache-similarity"])
        near = ask(PARAPHRASE, **{"X-Pgcache-Threshold": f"{min(similarity + 0.02, 1.0):.6f}"})
        assert near["x-pgcache-status"] == "miss"
        ask([{"role": "user", "content": "How do I prevent SQL injection?"}])
        status, _, _ = proxy.request(
            "POST",
            "/pgcache/feedback",
            {"lookup_id": semantic["x-pgcache-lookup-id"], "verdict": "wrong"},
            {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert status == 200
        proxy.cache.flush()
        yield proxy


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (make chromium installs Debian's)")
def test_the_dashboard_loads_in_chromium_and_shows_the_views_figures(populated, database_url):
    url = f"http://127.0.0.1:{populated.port}/#token={ADMIN_TOKEN}"
    done = chromium(url, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], "\n".join(console)
    page = Page()
    page.feed(done.stdout)
    assert page.attributes["body"].get("data-state") == "ready", page.ids.get("problem")

    lookups, exact, semantic = query(
        database_url, "SELECT sum(lookups), sum(exact_hits), sum(semantic_hits) FROM pgcache_hourly_stats"
    )[0]
    assert page.ids["lookups"] == f"{lookups:,}" and lookups == 7
    assert page.ids["exact-hits"] == str(exact) and page.ids["semantic-hits"] == str(semantic)
    assert page.ids["hit-rate"] == f"{100 * (exact + semantic) / lookups:.1f}%"
    top = query(database_url, "SELECT hit_count, prompt FROM pgcache_top_entries ORDER BY hit_count DESC LIMIT 1")[0]
    assert page.tables["top-entries"][1][0] == str(top[0]) and page.tables["top-entries"][1][3] == top[1]
    (near_prompt,) = query(database_url, "SELECT prompt FROM pgcache_near_misses")[0]
    assert near_prompt == PARAPHRASE[0]["content"] and page.tables["near-misses"][1][3] == near_prompt
    assert page.tables["wrong-hits"][1][2:] == [PARAPHRASE[0]["content"], QUESTION[0]["content"]]
    assert len(page.ids["chart-tiers"]) > 0, "uPlot drew the chart (its legend holds the series names)"

    screenshot = os.environ.get("PGCACHE_SCREENSHOT")
    if screenshot:
        shot = chromium(url, f"--screenshot={os.path.abspath(screenshot)}")
        assert shot.returncode == 0 and os.path.getsize(screenshot) > 10_000


def test_the_dashboard_figures_need_the_admin_token_when_one_is_set(populated):
    assert populated.request("GET", "/pgcache/dashboard.json", headers={"Authorization": ""})[0] == 401
    status, _, content = populated.request(
        "GET", "/pgcache/dashboard.json?hours=2", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    figures = json.loads(content)
    assert status == 200 and figures["hours"] == 2 and len(figures["time"]) == 2
    assert figures["totals"]["lookups"] == 7
    status, _, content = populated.request(
        "GET", "/pgcache/dashboard.json?hours=0", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert status == 400 and "hours must be a whole number from 1 to 720" in json.loads(content)["error"]["message"]
    status, headers, content = populated.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"uPlot.iife.min.js" in content
    assert populated.request("GET", "/static/uPlot.iife.min.js")[0] == 200
