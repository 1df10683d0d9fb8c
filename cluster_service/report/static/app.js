// The concept browser of a cluster_service run: plain DOM, no framework, no network.
// Data come as small scripts under data/ (Chromium refuses fetch/XHR on file:// pages, not <script>),
// each calling CS.put(name, value); a page asks for the files it shows and nothing else.
// Every string from the corpus or the labels reaches the page through text nodes, never as HTML.
"use strict";
(function () {
  const CS = (window.CS = { data: {}, waiting: {} });
  const SVG = "http://www.w3.org/2000/svg";

  CS.put = function (name, value) {
    CS.data[name] = value;
    const waiting = CS.waiting[name] || [];
    delete CS.waiting[name];
    waiting.forEach((w) => w[0](value));
    if (name === "index") start(value);
  };

  function load(name) {
    if (name in CS.data) return Promise.resolve(CS.data[name]);
    return new Promise((resolve, reject) => {
      if (CS.waiting[name]) {
        CS.waiting[name].push([resolve, reject]);
        return;
      }
      CS.waiting[name] = [[resolve, reject]];
      const script = document.createElement("script");
      script.src = "data/" + encodeURIComponent(name) + ".js";
      script.onerror = () => {
        const waiting = CS.waiting[name] || [];
        delete CS.waiting[name];
        waiting.forEach((w) => w[1](new Error("cannot load data/" + name + ".js")));
      };
      document.head.appendChild(script);
    });
  }

  // ---- DOM helpers: text only ---------------------------------------------------------------
  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, String(value));
    }
    append(node, kids);
    return node;
  }
  function append(node, kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      node.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return node;
  }
  function show(...nodes) {
    document.getElementById("main").replaceChildren(...nodes.flat());
    window.scrollTo(0, 0);
  }
  function fmt(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(3);
    if (Array.isArray(value)) return value.map(fmt).join(", ");
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }
  const conceptHref = (layer, k, id) => "#c/" + layer + "/" + k + "/" + id;

  // ---- routing ---------------------------------------------------------------------------------
  let INDEX = null;
  function start(index) {
    INDEX = index;
    document.getElementById("model").textContent = (index.model || "") + (index.tokens ? " - " + index.tokens + " tokens" : "");
    window.addEventListener("hashchange", route);
    route();
  }
  function tableOf(layer, k) {
    const t = INDEX.tables.find((x) => x.layer === layer && x.k === k);
    if (!t) throw new Error("the report has no table for layer " + layer + " and K " + k);
    return t;
  }
  function route() {
    const parts = location.hash.replace(/^#/, "").split("/").filter(Boolean);
    const view = parts[0] || "list";
    const num = (i) => parseInt(parts[i], 10);
    document.body.dataset.view = view;
    let page;
    try {
      const picked = parts.length >= 3 ? tableOf(num(1), num(2)) : INDEX.tables[0];
      if (view === "c") page = conceptPage(tableOf(num(1), num(2)), num(3));
      else if (view === "map") page = mapPage(picked);
      else if (view === "flow") page = flowPage(parts[1]);
      else if (view === "run") page = runPage();
      else page = listPage(picked);
    } catch (err) {
      page = Promise.reject(err);
    }
    Promise.resolve(page).catch((err) => show(el("p", { class: "error" }, String((err && err.message) || err))));
  }

  function picker(current, view) {
    const select = el("select", {
      id: "table", "aria-label": "layer and K",
      onchange: (e) => { location.hash = view + "/" + e.target.value; },
    });
    for (const t of INDEX.tables) {
      const option = el("option", { value: t.layer + "/" + t.k }, "layer " + t.layer + ", K = " + t.k);
      if (t === current) option.selected = true;
      select.appendChild(option);
    }
    return el("label", { class: "picker" }, "Table ", select);
  }

  // ---- concept list ----------------------------------------------------------------------------
  function rowObject(row) {
    return { concept: row[0], labels: row[1], type: row[2], size: row[3], top: row[4], scores: row[5], xy: row[6] };
  }

  async function listPage(t) {
    const list = await load(t.name);
    const rows = list.rows.map(rowObject);
    const state = { key: "concept", dir: 1, query: "", words: null };
    const columns = [{ key: "concept", title: "#" }];
    if (list.annotators.length) {
      list.annotators.forEach((a, i) => columns.push({ key: "label:" + i, title: list.annotators.length > 1 ? "label (" + a + ")" : "label" }));
    } else columns.push({ key: "label:0", title: "label" });
    columns.push({ key: "type", title: "type" }, { key: "size", title: "size" }, { key: "top", title: "top words" });
    list.scores.forEach((s, i) => columns.push({ key: "score:" + i, title: s }));
    const value = (r, key) => {
      if (key.startsWith("label:")) return r.labels[+key.slice(6)];
      if (key.startsWith("score:")) return r.scores[+key.slice(6)];
      if (key === "top") return r.top.join(" ");
      return r[key];
    };
    const tbody = el("tbody");
    const count = el("span", { id: "count" });
    const headRow = el("tr");
    columns.forEach((c) => {
      headRow.appendChild(el("th", {
        "data-key": c.key, title: "sort by " + c.title,
        onclick: () => { state.dir = state.key === c.key ? -state.dir : 1; state.key = c.key; render(); },
      }, c.title));
    });
    const search = el("input", { id: "search", type: "search", placeholder: "search by label or word", "aria-label": "search by label or word" });
    search.addEventListener("input", () => {
      state.query = search.value.trim().toLowerCase();
      if (state.query && !state.words) {
        load(t.name + ".words").then((w) => { state.words = w.words; render(); }, () => {});
      }
      render();
    });
    function matches(r, i) {
      const q = state.query;
      if (!q) return true;
      if (r.labels.some((l) => l && l.toLowerCase().includes(q))) return true;
      const words = state.words ? state.words[i] : r.top;
      return words.some((w) => w.toLowerCase().startsWith(q));
    }
    function compare(a, b) {
      const x = value(a, state.key), y = value(b, state.key);
      if (x === y) return a.concept - b.concept;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y))) * state.dir;
    }
    function render() {
      const shown = rows.filter((r, i) => matches(r, i)).sort(compare);
      count.textContent = shown.length + " of " + rows.length + " concepts";
      headRow.querySelectorAll("th").forEach((th) => {
        th.className = th.dataset.key === state.key ? (state.dir > 0 ? "sorted up" : "sorted down") : "";
      });
      tbody.replaceChildren(...shown.map((r) => {
        const href = conceptHref(t.layer, t.k, r.concept);
        const labels = list.annotators.length ? r.labels.map((l) => el("td", { class: "label" }, l === null ? "(no label)" : l))
          : [el("td", { class: "label muted" }, "(unlabelled)")];
        return el("tr", { "data-concept": r.concept },
          el("td", {}, el("a", { href }, r.concept)), labels, el("td", {}, r.type || ""),
          el("td", { class: "num" }, r.size), el("td", { class: "words" }, r.top.join(" ")),
          r.scores.map((s) => el("td", { class: "num" }, fmt(s))));
      }));
    }
    render();
    const notes = list.notes.length ? el("ul", { class: "notes" }, list.notes.map((n) => el("li", {}, n))) : null;
    show(el("section", { id: "list", "data-key": t.layer + "/" + t.k },
      el("div", { class: "toolbar" }, picker(t, "list"), search, count,
        t.has_map ? el("a", { href: "#map/" + t.layer + "/" + t.k }, "map of this table") : null),
      notes,
      list.scores.length ? null : el("p", { class: "muted", id: "no-analysis" }, "Analysis scores: absent (run `cluster-service analyze` to add them)."),
      el("table", { class: "concepts" }, el("thead", {}, headRow), tbody)));
    search.focus();
  }

  // ---- concept page ----------------------------------------------------------------------------
  async function conceptPage(t, id) {
    const [list, part] = await Promise.all([load(t.name), load(t.name + ".d" + Math.floor(id / t.chunk))]);
    const detail = part.concepts[String(id)];
    const row = list.rows.map(rowObject).find((r) => r.concept === id);
    if (!detail || !row) throw new Error("no concept " + id + " at layer " + t.layer + ", K " + t.k);
    const label = row.labels[0];
    const max = Math.max(1, ...detail.top_types.map((x) => x[1]));
    const BARS = 20;
    const bars = el("div", { class: "bars", id: "types" }, detail.top_types.slice(0, BARS).map(([word, n]) =>
      el("div", { class: "bar" }, el("span", { class: "word" }, word),
        el("span", { class: "fill", style: "width:" + (100 * n / max).toFixed(1) + "%" }), el("span", { class: "n" }, n))),
      detail.top_types.length > BARS ? el("p", { class: "muted" }, "and " + detail.top_types.slice(BARS).map(([w, n]) => w + " (" + n + ")").join(", ")) : null);
    const examples = el("ol", { class: "examples", id: "examples" }, detail.examples.map(([sentence, position, word]) => {
      const words = sentence.split(" ");
      const at = words[position] === word ? position : words.indexOf(word);
      return el("li", {}, words.map((w, i) => [i ? " " : "", i === at ? el("mark", {}, w) : w]));
    }));
    const link = ([k, cid, text]) => el("a", { href: conceptHref(t.layer, k, cid), class: "concept-link" },
      "concept " + cid + " (K = " + k + ")" + (text ? ": " + text : ""));
    let hierarchy;
    if (part.hierarchy !== "tree") hierarchy = el("p", { class: "muted" }, "Hierarchy: " + part.hierarchy + ".");
    else {
      const known = INDEX.tables.some((x) => x.layer === t.layer && x.k < t.k);
      hierarchy = el("div", {},
        el("p", { id: "parent" }, "Parent: ", detail.parent ? link(detail.parent) : (known ? "none" : "none (the smallest K of this layer)")),
        el("p", {}, "Children" + (detail.children.length ? " (" + detail.children.length + ")" : "") + ": ",
          detail.children.length ? el("span", { id: "children" }, detail.children.map((c, i) => [i ? ", " : "", link(c)]))
            : "none (the largest K of this layer)"));
    }
    const names = Object.keys(detail.analysis);
    const analysis = names.length
      ? el("table", { class: "kv", id: "analysis" }, names.map((n) => el("tr", {}, el("th", {}, n), el("td", {}, fmt(detail.analysis[n])))))
      : el("p", { class: "muted", id: "analysis" }, "Score, aligned tag, probe accuracy and selectivity, top neurons, stability: absent (run `cluster-service analyze`).");
    show(el("article", { id: "concept", "data-key": t.layer + "/" + t.k + "/" + id },
      el("p", { class: "crumbs" }, el("a", { href: "#list/" + t.layer + "/" + t.k }, "layer " + t.layer + ", K = " + t.k), " / concept " + id),
      el("h2", { id: "concept-label" }, label === null || label === undefined ? "concept " + id + " (unlabelled)" : label),
      el("p", { class: "meta" }, "size " + row.size + (row.type ? " - type " + row.type : "")),
      list.annotators.length > 1 ? el("table", { class: "kv", id: "labels" }, list.annotators.map((a, i) =>
        el("tr", {}, el("th", {}, a), el("td", {}, row.labels[i] === null ? "(no label)" : row.labels[i])))) : null,
      el("h3", {}, "Top word types"), bars,
      el("h3", {}, "Examples in context"), examples,
      el("h3", {}, "Place in the hierarchy"), hierarchy,
      el("h3", {}, "Analysis"), analysis));
  }

  // ---- map -------------------------------------------------------------------------------------
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  }

  async function mapPage(t) {
    if (!t.has_map) {
      show(el("section", { id: "map" }, picker(t, "map"),
        el("p", { class: "muted" }, "Map: absent (this table has no centroids: an imported ConceptX clustering).")));
      return;
    }
    const list = await load(t.name);
    const rows = list.rows.map(rowObject).sort((a, b) => b.size - a.size);
    const W = 960, H = 640, pad = 24, biggest = Math.max(1, rows[0] ? rows[0].size : 1);
    const plot = svg("svg", { viewBox: "0 0 " + W + " " + H, width: "100%", role: "img", id: "map-svg" });
    const placed = [];  // label boxes drawn so far: a label that would overlap one is left to the tooltip
    const fits = (x, y, w) => !placed.some((b) => x < b.x + b.w && b.x < x + w && Math.abs(y - b.y) < 13);
    for (const r of rows) {
      const cx = pad + r.xy[0] * (W - 2 * pad), cy = pad + (1 - r.xy[1]) * (H - 2 * pad);
      const dot = svg("circle", { cx: cx.toFixed(1), cy: cy.toFixed(1), r: (2 + 22 * Math.sqrt(r.size / biggest)).toFixed(1), class: "dot" });
      const title = svg("title", {});
      title.textContent = "concept " + r.concept + " (" + r.size + "): " + (r.labels[0] || "") ;
      dot.appendChild(title);
      dot.addEventListener("click", () => { location.hash = conceptHref(t.layer, t.k, r.concept).slice(1); });
      plot.appendChild(dot);
      const full = r.labels[0] || r.top.slice(0, 3).join(" ");
      const name = full.length > 28 ? full.slice(0, 27) + "..." : full;
      const x = cx + 4, y = cy - 4, w = 6.2 * name.length;
      if (placed.length < 40 && x + w < W && fits(x, y, w)) {
        placed.push({ x, y, w });
        const text = svg("text", { x: x.toFixed(1), y: y.toFixed(1), class: "dot-label" });
        text.textContent = name;
        plot.appendChild(text);
      }
    }
    show(el("section", { id: "map", "data-key": t.layer + "/" + t.k }, el("div", { class: "toolbar" }, picker(t, "map")),
      el("p", { class: "muted" }, "The concepts' centroids on their first two principal axes (PCA); area by size. Each axis spans 94% of the concepts; the rest sit on its edge. Click a concept to open it."),
      plot));
  }

  // ---- flow between layers ---------------------------------------------------------------------
  async function flowPage(name) {
    if (!INDEX.flows.length) {
      show(el("section", { id: "flow" }, el("h2", {}, "Concepts across layers"),
        el("p", { class: "muted" }, "Flow between layers: absent (run the `layers` analysis of `cluster-service analyze`).")));
      return;
    }
    const chosen = INDEX.flows.find((f) => f.name === name) || INDEX.flows[0];
    const flow = await load(chosen.name);
    const links = el("p", {}, INDEX.flows.map((f, i) => [i ? " | " : "", el("a", { href: "#flow/" + f.name }, "layer " + f.a + " to " + f.b + ", K = " + f.k)]));
    const tables = Object.entries(flow.tables).map(([tname, tab]) => el("div", {},
      el("h3", {}, tname + " (" + tab.total + " rows" + (tab.total > tab.rows.length ? ", first " + tab.rows.length + " shown" : "") + ")"),
      el("table", { class: "concepts" }, el("thead", {}, el("tr", {}, tab.columns.map((c) => el("th", {}, c)))),
        el("tbody", {}, tab.rows.map((r) => el("tr", {}, r.map((v) => el("td", {}, fmt(v)))))))));
    show(el("section", { id: "flow" }, el("h2", {}, "How concepts split and merge from layer " + flow.a + " to " + flow.b), links, tables));
  }

  // ---- run page --------------------------------------------------------------------------------
  async function runPage() {
    const run = await load("run");
    const model = run.model || {};
    const llm = run.llm;
    const cost = llm.calls ? "$" + llm.cost_usd.toFixed(4) + (llm.cost_unknown ? " (some prices unknown)" : "") : "no LLM calls (baseline labels or none)";
    show(el("section", { id: "run" },
      el("h2", {}, "The run"),
      el("table", { class: "kv" },
        el("tr", {}, el("th", {}, "model"), el("td", {}, fmt(model.name || "not recorded") + (model.hidden_size ? " (" + model.hidden_size + " dims)" : ""))),
        el("tr", {}, el("th", {}, "corpus"), el("td", {}, fmt(run.sentences) + " sentences, " + fmt(run.tokens) + " tokens" + (run.corpus_fingerprint ? ", fingerprint " + run.corpus_fingerprint : ""))),
        el("tr", {}, el("th", {}, "layers"), el("td", {}, fmt(run.layers))),
        run.imported ? el("tr", {}, el("th", {}, "imported from"), el("td", {}, fmt(run.imported.from))) : null,
        el("tr", {}, el("th", {}, "LLM calls"), el("td", { id: "cost" }, llm.calls + " calls, " + llm.llm_tokens + " LLM tokens, cost " + cost))),
      el("h3", {}, "Stages"),
      el("table", { class: "concepts", id: "stages" },
        el("thead", {}, el("tr", {}, ["stage", "status", "seconds", "by", "updated"].map((c) => el("th", {}, c)))),
        el("tbody", {}, run.stages.map((s) => el("tr", {}, el("td", {}, s.stage), el("td", {}, fmt(s.status)),
          el("td", { class: "num" }, fmt(s.seconds)), el("td", {}, fmt(s.by)), el("td", {}, fmt(s.updated)))))),
      el("h3", {}, "Configuration"),
      el("pre", { id: "config" }, JSON.stringify(run.config, null, 1))));
  }
})();
