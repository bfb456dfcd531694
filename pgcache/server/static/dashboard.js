// The dashboard: fetches /pgcache/dashboard.json and draws it. All text from the
// cache (prompts) goes in through textContent, never as HTML.
"use strict";

(function () {
  const REFRESH_MS = 30000;
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  const charts = {};

  function text(id, value) {
    document.getElementById(id).textContent = value;
  }

  function integer(n) {
    return n == null ? "–" : Math.round(n).toLocaleString("en-US");
  }

  function percent(x) {
    return x == null ? "–" : (100 * x).toFixed(1) + "%";
  }

  function when(iso) {
    return iso ? iso.replace("T", " ").slice(0, 19) + " UTC" : "–";
  }

  function fill(tableId, rows, cells) {
    const body = document.querySelector("#" + tableId + " tbody");
    body.replaceChildren();
    if (!rows.length) {
      const tr = body.insertRow();
      const td = tr.insertCell();
      td.colSpan = document.querySelectorAll("#" + tableId + " th").length;
      td.className = "empty";
      td.textContent = "none";
      return;
    }
    for (const row of rows) {
      const tr = body.insertRow();
      for (const [value, numeric] of cells(row)) {
        const td = tr.insertCell();
        td.textContent = value == null ? "–" : String(value);
        if (numeric) td.className = "number";
      }
    }
  }

  function chart(id, series, data, options) {
    const element = document.getElementById(id);
    if (charts[id]) {
      charts[id].setData(data);
      return;
    }
    charts[id] = new uPlot(
      Object.assign({ width: element.clientWidth || 560, height: 220, series: [{}].concat(series) }, options || {}),
      data,
      element
    );
  }

  function draw(figures) {
    const t = figures.totals;
    text("hours", figures.hours);
    text("generated", when(figures.generated_at));
    text("lookups", integer(t.lookups));
    text("hit-rate", percent(t.hit_rate));
    text("exact-hits", integer(t.exact_hits));
    text("semantic-hits", integer(t.semantic_hits));
    text("tokens-saved", integer(t.tokens_saved));
    text("dollars-saved", "$" + t.dollars_saved.toFixed(2) + (t.all_models_priced ? "" : " (some models unpriced)"));
    const s = figures.series;
    chart("chart-tiers", [
      { label: "exact", stroke: "#2b6cb0", fill: "rgba(43,108,176,.15)" },
      { label: "semantic", stroke: "#2f855a", fill: "rgba(47,133,90,.15)" },
      { label: "misses", stroke: "#b7791f" },
    ], [figures.time, s.exact, s.semantic, s.misses]);
    chart("chart-hit-rate", [
      { label: "hit rate %", stroke: "#2b6cb0", value: (u, v) => (v == null ? "–" : v.toFixed(1) + "%") },
    ], [figures.time, s.hit_rate.map((x) => (x == null ? null : 100 * x))], {
      scales: { y: { range: [0, 100] } },
    });
    chart("chart-latency", [
      { label: "p50", stroke: "#2f855a" },
      { label: "p95", stroke: "#b7791f" },
      { label: "p99", stroke: "#c53030" },
    ], [figures.time, s.p50, s.p95, s.p99]);
    fill("top-entries", figures.top_entries, (r) => [
      [integer(r.hit_count), true], [integer(r.tokens_saved), true], [r.namespace], [r.prompt], [when(r.last_hit_at)],
    ]);
    fill("near-misses", figures.near_misses, (r) => [
      [when(r.at)], [r.similarity.toFixed(3), true], [r.threshold.toFixed(3), true], [r.prompt], [r.candidate_prompt],
    ]);
    fill("wrong-hits", figures.wrong_hits, (r) => [
      [when(r.at)], [r.similarity == null ? null : r.similarity.toFixed(3), true], [r.prompt], [r.entry_prompt],
    ]);
  }

  async function refresh() {
    const problem = document.getElementById("problem");
    try {
      const headers = token ? { Authorization: "Bearer " + token } : {};
      const response = await fetch("/pgcache/dashboard.json" + location.search, { headers: headers });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error((body.error && body.error.message) || "HTTP " + response.status);
      }
      draw(await response.json());
      problem.hidden = true;
      document.body.dataset.state = "ready";
    } catch (error) {
      problem.textContent = "Could not load the figures: " + error.message;
      problem.hidden = false;
      document.body.dataset.state = "failed";
    }
  }

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
