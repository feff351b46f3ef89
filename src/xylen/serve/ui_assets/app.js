/* xylen dashboard: a small single-page app over the /ui/api feeds (the contract: README "Dashboard").
 *
 * Plain JavaScript, no build step, nothing from another origin. Every string from the server reaches the page
 * through textContent / text nodes (the h() helper), never innerHTML, and links are taken only when they are
 * paths on this origin. Hash routes: #/models, #/models/<name>, #/data, #/server. Each view polls its own feed
 * (models and data every 5 s, server every 3 s) and stops while the tab is hidden.
 */
"use strict";
(function () {
  // "/ui" (or "<prefix>/ui" behind a path prefix): every URL below is built on it
  const BASE = location.pathname.replace(/\/+$/, "").replace(/\/ui$/, "") + "/ui";
  const SESSION_EVERY_MS = 5000;
  const PALETTE = ["#1f6feb", "#e5534b", "#2da44e", "#bf8700", "#8250df", "#0e8a8a", "#d2691e", "#6e7781"];

  const $ = (id) => document.getElementById(id);
  const view = $("view");
  let session = null;
  let sessionAt = 0;

  // ---- DOM helpers: text only -------------------------------------------------------------------------------------
  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k === "href") el.setAttribute("href", v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : String(kid)); // a string becomes a text node: never parsed as HTML
    }
    return el;
  }
  // a same-origin path from the server ("/ui/report/..."), or null: never javascript:, data: or //other.host
  function safePath(url) {
    return typeof url === "string" && /^\/(?![/\\])/.test(url) ? url : null;
  }
  const modelHref = (name) => "#/models/" + encodeURIComponent(name);

  // ---- formatting -------------------------------------------------------------------------------------------------
  const pad = (n) => String(n).padStart(2, "0");
  function fmtTime(ms) {
    if (ms === null || ms === undefined) return "—";
    const d = new Date(ms);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())} UTC`;
  }
  function fmtDur(s) {
    if (s === null || s === undefined || !isFinite(s)) return "—";
    const a = Math.abs(s);
    if (a < 90) return `${Math.round(s)} s`;
    if (a < 90 * 60) return `${Math.round(s / 60)} min`;
    if (a < 48 * 3600) return `${Math.floor(a / 3600)} h ${Math.round((a % 3600) / 60)} min`;
    return `${Math.floor(a / 86400)} d ${Math.round((a % 86400) / 3600)} h`;
  }
  const fmtNum = (x, d = 3) => (x === null || x === undefined || !isFinite(x) ? "—" : Number(x).toFixed(d));
  const fmtPct = (x) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(1)}%`);
  const fmtInt = (x) => (x === null || x === undefined ? "—" : Number(x).toLocaleString("en-US"));
  function fmtBytes(b) {
    if (b === null || b === undefined) return "—";
    const u = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return `${b.toFixed(i ? 1 : 0)} ${u[i]}`;
  }
  // a gap [start, end): open times from start up to, not including, end; with its candle count when known
  function fmtRange(r, stepS) {
    const a = fmtTime(r[0]), b = fmtTime(r[1]);
    const span = a.slice(0, 10) === b.slice(0, 10) ? `${a.slice(0, 16)} – ${b.slice(11)}` : `${a} – ${b}`;
    const n = stepS ? Math.round((r[1] - r[0]) / 1000 / stepS) : null;
    return n ? `${span} (${fmtInt(n)} candle${n === 1 ? "" : "s"})` : span;
  }
  const INTERVAL_S = { m: 60, h: 3600, d: 86400, w: 604800, M: 2592000 };
  function intervalSeconds(iv) {
    const m = /^(\d+)([mhdwM])$/.exec(iv || "");
    return m ? Number(m[1]) * INTERVAL_S[m[2]] : null;
  }

  // ---- HTTP -------------------------------------------------------------------------------------------------------
  class HttpError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }
  async function call(path, init) {
    let r;
    try {
      r = await fetch(BASE + path, { credentials: "same-origin", cache: "no-store", ...init });
    } catch (e) {
      throw new HttpError(0, `the server did not answer (${e.message}); is xylen serve running?`);
    }
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) {
      const msg = body && typeof body.error === "string" ? body.error : `HTTP ${r.status} from ${path}`;
      if (r.status === 401) expired(msg);
      throw new HttpError(r.status, msg);
    }
    return body;
  }
  const get = (path) => call(path, { headers: { Accept: "application/json" } });
  function post(path, body) {
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    if (session && session.csrf) headers["X-CSRF-Token"] = session.csrf;
    return call(path, { method: "POST", headers, body: JSON.stringify(body || {}) });
  }
  function expired(msg) {
    const b = $("banner");
    b.replaceChildren(`${msg} `, h("a", { href: BASE }, "Log in again"));
    b.hidden = false;
  }

  // ---- header: readiness, version, refresh time, log out ----------------------------------------------------------
  async function refreshSession(force) {
    if (!force && Date.now() - sessionAt < SESSION_EVERY_MS) return;
    sessionAt = Date.now();
    session = await get("/api/session");
    const pill = $("ready");
    pill.hidden = false;
    pill.className = "pill " + (session.ready ? "good" : "bad");
    pill.textContent = session.ready ? "ready" : "not ready";
    pill.title = session.ready ? "/health/ready answers 200" : (session.reason || "not ready");
    $("version").textContent = session.version ? `xylen ${session.version}` : "";
    $("logout").hidden = session.auth !== "cookie";
  }
  function refreshed(ok, err) {
    const b = $("banner");
    if (ok) {
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      if (b.dataset.kind === "poll") { b.hidden = true; b.dataset.kind = ""; }
    } else if (!(err instanceof HttpError && err.status === 401)) {
      b.dataset.kind = "poll";
      b.textContent = `Could not refresh: ${err.message} (retrying)`;
      b.hidden = false;
    }
  }
  function notice(kind, text) {
    const n = $("notice");
    n.className = "notice " + kind;
    $("notice-text").textContent = text;
    n.hidden = false;
  }
  $("notice-close").addEventListener("click", () => { $("notice").hidden = true; });

  // ---- confirmation dialog ----------------------------------------------------------------------------------------
  function confirmAction(title, text, warning, okLabel) {
    const d = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-warning").textContent = warning || "";
    $("confirm-warning").hidden = !warning;
    $("confirm-ok").textContent = okLabel;
    d.returnValue = "";
    return new Promise((resolve) => {
      d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
      d.showModal();
      $("confirm-ok").focus();
    });
  }

  // ---- views ------------------------------------------------------------------------------------------------------
  function table(headers, rows, attrs) {
    return h("div", { class: "table-wrap" },
      h("table", attrs || {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
        h("tbody", {}, rows)));
  }
  const empty = (cols, text) => h("tr", {}, h("td", { colspan: cols, class: "muted" }, text));
  function reportLink(url) {
    const p = safePath(url);
    return p ? h("a", { href: p, target: "_blank", rel: "noopener" }, "report") : h("span", { class: "muted" }, "—");
  }
  function livePerf(live) {
    if (!live) return h("span", { class: "muted" }, "no outcomes realised yet");
    const known = (x) => x !== null && x !== undefined;
    if (!known(live.auc) && !known(live.hit_rate)) {
      // too few outcomes for a score: the server's note says how many there are and how many it needs
      return h("span", { class: "muted" }, live.note || `${fmtInt(live.rows)} outcomes since ${fmtTime(live.since)}`);
    }
    const auc = `AUC ${fmtNum(live.auc)}` + (known(live.baseline_auc) ? ` (baseline ${fmtNum(live.baseline_auc)})` : "");
    const hit = `hit rate ${fmtPct(live.hit_rate)}` +
      (known(live.baseline_hit_rate) ? ` (baseline ${fmtPct(live.baseline_hit_rate)})` : "");
    return h("span", {}, `${auc}, ${hit}`, h("br"),
      h("span", { class: "muted small" }, `${fmtInt(live.rows)} outcomes since ${fmtTime(live.since)}`));
  }

  const Models = {
    every: 5000,
    title: "Models",
    async refresh() {
      const d = await get("/api/models");
      if (current !== Models) return; // the user moved on while the feed answered
      const rows = d.models.map((m) => {
        const ver = [h("span", { class: "mono" }, m.live_version || "none")];
        if (m.loaded_version && m.loaded_version !== m.live_version) {
          ver.push(h("br"), h("span", { class: "muted small" }, `serving ${m.loaded_version}`));
        } else if (m.live_version && !m.loaded_version) {
          ver.push(h("br"), h("span", { class: "muted small" }, "not loaded"));
        }
        const age = [fmtDur(m.age_s)];
        if (m.stale) {
          age.push(" ", h("span", { class: "badge warn", title: `older than ${fmtDur(m.max_age_s)} (XYLEN_MODEL_MAX_AGE)` },
            "stale"));
        }
        const skill = [m.sentence || h("span", { class: "muted" }, "no evaluation recorded")];
        if (!m.ok) skill.unshift(h("div", { class: "bad" }, m.error || "not loaded"));
        const name = [h("a", { href: modelHref(m.name) }, m.name)];
        if (m.members && m.members.length) {
          name.push(h("br"), h("span", { class: "muted small" }, `ensemble of ${m.members.join(", ")}`));
        }
        return h("tr", { dataset: { model: m.name } },
          h("td", { class: "nowrap" }, name),
          h("td", { class: "num" }, ver),
          h("td", { class: "num" }, age),
          h("td", { class: "wide" }, m.label || h("span", { class: "muted" }, "—")),
          h("td", { class: "wide" }, skill),
          h("td", {}, livePerf(m.live)),
          h("td", {}, reportLink(m.report_url)));
      });
      view.replaceChildren(
        h("h1", {}, "Models"),
        table(["Model", "Live version", "Age", "Probability means", "Skill (95% interval) vs baseline",
          "Live since promotion", "Report"],
          rows.length ? rows : [empty(7, "No models in the registry yet: `xylen train` makes one.")],
          { id: "models" }));
    },
  };

  function ModelView(name) {
    let busy = false;
    async function act(what, path, body, okText) {
      busy = true;
      for (const b of view.querySelectorAll("button[data-action]")) b.disabled = true;
      try {
        const r = await post(path, body);
        notice("ok", okText(r));
      } catch (e) {
        notice("err", `${what} refused: ${e.message}`);
      } finally {
        busy = false;
        await self.refresh().catch(() => {});
      }
    }
    const self = {
      every: 5000,
      title: name,
      async refresh() {
        if (busy) return;
        const path = `/api/models/${encodeURIComponent(name)}`;
        const d = await get(path);
        if (current !== self) return;
        const ok = (r) => `${r.name} now serves ${r.live_version || "nothing"}` +
          (r.previous_version ? ` (previous: ${r.previous_version}).` : ".");
        const promote = async (v) => {
          const warn = v.ok ? null : `This version reports a problem: ${v.error || "not ok"}. The server verifies it first.`;
          if (await confirmAction(`Promote ${v.version}?`,
            `${name} will serve ${v.version} instead of ${d.live_version || "nothing"}. Every worker swaps to it.`,
            warn, `Promote ${v.version}`)) {
            await act("Promotion", `${path}/promote`, { version: v.version }, ok);
          }
        };
        const rollback = async () => {
          const to = d.previous_version ? `back to ${d.previous_version}` : "to the version before";
          if (await confirmAction(`Roll back ${name}?`,
            `${name} will serve ${to} instead of ${d.live_version || "nothing"}.`, null, "Roll back")) {
            await act("Rollback", `${path}/rollback`, {}, ok);
          }
        };
        const versions = d.versions.map((v) => {
          const g = v.gate;
          const tags = [h("span", { class: "mono" }, v.version)];
          if (v.live) tags.push(" ", h("span", { class: "badge good" }, "live"));
          if (v.pinned) tags.push(" ", h("span", { class: "badge plain", title: "kept by pruning" }, "pinned"));
          const skill = [v.sentence || h("span", { class: "muted" }, "—")];
          if (!v.ok) skill.unshift(h("div", { class: "bad" }, v.error || "not usable"));
          return h("tr", { class: v.live ? "is-live" : null, dataset: { version: v.version } },
            h("td", {}, tags),
            h("td", { class: "num" }, fmtTime(v.created_at)),
            h("td", {}, v.backend || "—"),
            h("td", {}, g ? [g.decision, h("br"), h("span", { class: "muted small" }, fmtTime(g.at))] : "—"),
            h("td", { class: "num" }, g ? fmtNum(g.candidate_score, 4) : "—"),
            h("td", { class: "num" }, g ? fmtNum(g.live_score, 4) : "—"),
            h("td", {}, g && g.metric ? g.metric : "—"),
            h("td", { class: "wide" }, g && g.reason ? g.reason : "—"),
            h("td", { class: "wide" }, skill),
            h("td", {}, reportLink(v.report_url)),
            h("td", {}, v.live ? "" : h("button", { type: "button", dataset: { action: "promote" },
              on: { click: () => promote(v) } }, "Promote")));
        });
        const history = d.history.map((e) => h("tr", {},
          h("td", { class: "num" }, fmtTime(e.at)), h("td", {}, e.event),
          h("td", { class: "mono" }, e.version || "—"), h("td", {}, e.detail || "")));
        view.replaceChildren(
          h("p", { class: "muted small" }, h("a", { href: "#/models" }, "Models"), " / ", name),
          h("h1", {}, name),
          h("dl", { class: "facts" },
            h("div", {}, h("dt", {}, "Live version"), h("dd", { class: "mono", id: "live-version" }, d.live_version || "none")),
            h("div", {}, h("dt", {}, "Previous version"), h("dd", { class: "mono" }, d.previous_version || "none"))),
          h("div", { class: "toolbar" },
            h("button", { type: "button", class: "danger", id: "rollback", dataset: { action: "rollback" },
              on: { click: rollback } }, "Roll back"),
            h("span", { class: "muted small" }, "Promote and roll back go through the registry's verification.")),
          h("h2", {}, "Versions"),
          table(["Version", "Created", "Backend", "Gate", "Candidate score", "Live score", "Metric", "Reason",
            "Skill", "Report", ""], versions.length ? versions : [empty(11, "No versions.")], { id: "versions" }),
          h("h2", {}, "History"),
          table(["When", "Event", "Version", "Detail"], history.length ? history : [empty(4, "No events yet.")],
            { id: "history" }));
      },
    };
    return self;
  }

  const openRanges = new Set();
  const Data = {
    every: 5000,
    title: "Data",
    async refresh() {
      const d = await get("/api/data");
      if (current !== Data) return;
      // a list of ranges behind a <details>; which ones are open survives the refresh that rebuilds the table
      const ranges = (list, key, one, many, total, missing, step) => {
        if (!list.length) return h("span", { class: "muted" }, "none");
        const n = typeof total === "number" ? total : list.length;
        let label = `${fmtInt(n)} ${n === 1 ? one : many}`;
        if (typeof missing === "number") label += `, ${fmtInt(missing)} candle${missing === 1 ? "" : "s"} missing`;
        const items = list.map((r) => h("li", {}, fmtRange(r, step)));
        if (n > list.length) items.unshift(h("li", { class: "muted" }, `the newest ${list.length}:`));
        return h("details", { open: openRanges.has(key), on: { toggle: (ev) => {
          if (ev.target.open) openRanges.add(key); else openRanges.delete(key);
        } } }, h("summary", {}, label), h("ul", { class: "ranges" }, items));
      };
      const rows = d.series.map((s) => {
        const step = intervalSeconds(s.interval);
        const lag = [fmtDur(s.lag_s)];
        if (s.lag_s !== null && step && s.lag_s > 2 * step) lag.push(" ", h("span", { class: "badge warn" }, "behind"));
        const key = `${s.exchange}/${s.symbol}/${s.interval}`;
        return h("tr", { dataset: { series: key } },
          h("td", {}, s.exchange), h("td", { class: "mono" }, s.symbol), h("td", {}, s.interval),
          h("td", { class: "num" }, fmtTime(s.first_open_time)), h("td", { class: "num" }, fmtTime(s.last_open_time)),
          h("td", { class: "num" }, fmtInt(s.candles)), h("td", { class: "num" }, lag),
          h("td", { class: s.gaps.length ? "bad" : null }, ranges(s.gaps, `${key}|gaps`, "gap", "gaps", s.gaps_total, s.missing, step)),
          h("td", {}, ranges(s.known_gaps, `${key}|known`, "known gap", "known gaps", null, null, step)),
          h("td", { class: "bad" }, s.error || ""));
      });
      view.replaceChildren(
        h("h1", {}, "Data"),
        h("p", { class: "muted small" }, "Read from the candle store on this machine; no exchange is called."),
        table(["Exchange", "Symbol", "Interval", "First candle", "Last candle", "Candles", "Lag", "Gaps",
          "Known gaps", ""], rows.length ? rows : [empty(10, "No candles stored yet: `xylen collect` fetches them.")],
          { id: "data" }));
    },
  };

  // ---- server view: uPlot charts ----------------------------------------------------------------------------------
  function Server() {
    const charts = new Map(); // id -> {plot, key, el}
    let skeleton = null;
    const cssVar = (n) => getComputedStyle(document.documentElement).getPropertyValue(n).trim();
    let xRange = [0, 1];  // the x range: the hour up to the feed's "now", in seconds
    function chart(slot, id, title, names, xs, ys, fmt) {
      const key = names.join("\u0000");
      const data = [xs, ...ys];
      let c = charts.get(id);
      if (c && c.key === key) { c.plot.setData(data); return; }
      if (c) c.plot.destroy();
      const fg = cssVar("--muted"), grid = cssVar("--line");
      const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
      const width = Math.max(300, slot.clientWidth - 24);
      const opts = {
        width, height: 190,
        series: [{ value: (u, v) => (v === null ? "—" : new Date(v * 1000).toISOString().slice(11, 19) + " UTC") },
          ...names.map((n, i) => ({ label: n, stroke: PALETTE[i % PALETTE.length], width: 1.5,
            value: (u, v) => (v === null ? "—" : fmt(v)) }))],
        axes: [axis, { ...axis, size: 84, values: (u, vs) => vs.map((v) => (v === null ? "" : fmt(v))) }],
        scales: { x: { time: true, range: () => xRange },
          y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
        cursor: { drag: { x: false, y: false } },
      };
      const target = h("div", {});
      slot.replaceChildren(h("h3", {}, title), target);
      charts.set(id, { plot: new uPlot(opts, data, target), key, slot });
    }
    function resize() {
      for (const c of charts.values()) c.plot.setSize({ width: Math.max(300, c.slot.clientWidth - 24), height: 190 });
    }
    const self = {
      every: 3000,
      title: "Server",
      async refresh() {
        const d = await get("/api/server");
        if (current !== self) return;
        if (!skeleton) {
          skeleton = {
            facts: h("dl", { class: "facts" }),
            note: h("p", { class: "muted small" }),
            slots: ["rate", "p50", "p99", "errors", "rss"].map((k) => h("div", { class: "chart", dataset: { chart: k } })),
            jobs: h("div", {}),
          };
          view.replaceChildren(h("h1", {}, "Server"), skeleton.facts, h("h2", {}, "Last hour"), skeleton.note,
            h("div", { class: "charts" }, skeleton.slots), h("h2", {}, "Retrain jobs"), skeleton.jobs);
          window.addEventListener("resize", resize);
        }
        const ready = d.ready ? h("span", { class: "pill good" }, "ready")
          : [h("span", { class: "pill bad" }, "not ready"), " ", h("span", { class: "bad", id: "not-ready-reason" }, d.reason || "")];
        skeleton.facts.replaceChildren(
          h("div", {}, h("dt", {}, "Readiness"), h("dd", { id: "readiness" }, ready)),
          h("div", {}, h("dt", {}, "Workers"), h("dd", {}, String(d.workers))),
          h("div", {}, h("dt", {}, "Memory (RSS)"), h("dd", {}, fmtBytes(d.rss_bytes))));
        const hist = d.history;
        const xs = hist.t.map((t) => t / 1000);
        xRange = [d.now / 1000 - 3600, d.now / 1000];
        const routes = Object.keys(hist.routes).sort();
        skeleton.note.textContent = xs.length
          ? `${xs.length} sample${xs.length === 1 ? "" : "s"} from the server's own counters (those of /metrics), ${fmtTime(hist.t[0])} to now.`
          : "No samples yet: the server records one every 10 s.";
        const pick = (k) => routes.map((r) => hist.routes[r][k]);
        const ms = (v) => (v < 10 ? v.toFixed(2) : v.toFixed(0)) + " ms";
        const rate = (v) => (v < 10 ? v.toFixed(2) : v.toFixed(0)) + "/s";
        const [s1, s2, s3, s4, s5] = skeleton.slots;
        chart(s1, "rate", "Requests per second by route", routes, xs, pick("rate"), rate);
        chart(s2, "p50", "p50 latency by route", routes, xs, pick("p50_ms"), ms);
        chart(s3, "p99", "p99 latency by route", routes, xs, pick("p99_ms"), ms);
        chart(s4, "errors", "Errors per second (4xx and 5xx)", ["errors"], xs, [hist.errors_per_s], rate);
        chart(s5, "rss", "Memory (RSS)", ["RSS"], xs, [hist.rss_bytes], fmtBytes);
        const jobs = d.jobs.map((j) => h("tr", {},
          h("td", { class: "mono" }, j.id), h("td", {}, j.state), h("td", { class: "num" }, fmtTime(j.started_at)),
          h("td", { class: "num" }, fmtTime(j.finished_at)), h("td", {}, (j.models || []).join(", ") || "—"),
          h("td", { class: "wide" }, j.result || "")));
        skeleton.jobs.replaceChildren(table(["Job", "State", "Started", "Finished", "Models", "Result"],
          jobs.length ? jobs : [empty(6, "No retrain jobs since the server started.")], { id: "jobs" }));
      },
      stop() {
        window.removeEventListener("resize", resize);
        for (const c of charts.values()) c.plot.destroy();
        charts.clear();
      },
    };
    return self;
  }

  // ---- router and polling -----------------------------------------------------------------------------------------
  let current = null;
  let timer = null;
  let generation = 0;
  let first = true;

  function route() {
    const hash = location.hash.replace(/^#\/?/, "");
    const [top, ...rest] = hash.split("/");
    if (current && current.stop) current.stop();
    let key = top;
    if (top === "models" && rest.length && rest[0]) {
      let name;
      try { name = decodeURIComponent(rest.join("/")); } catch (e) { name = rest.join("/"); }
      current = ModelView(name);
    } else if (top === "data") current = Data;
    else if (top === "server") current = Server();
    else { key = "models"; current = Models; }
    for (const a of document.querySelectorAll("nav a")) {
      if (a.dataset.view === key) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    document.title = `${current.title} · xylen`;
    $("notice").hidden = true;
    view.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    start();
  }

  async function tick(gen) {
    try {
      await Promise.all([current.refresh(), refreshSession(false)]);
      refreshed(true);
      if (first) {
        first = false;
        performance.mark("xylen:interactive");
        document.documentElement.dataset.interactive = "1";
      }
    } catch (e) {
      refreshed(false, e);
      if (e instanceof HttpError && e.status === 404 && !view.querySelector("table, .charts")) {
        view.replaceChildren(h("p", { class: "bad" }, e.message));
      }
    }
    if (gen === generation && !document.hidden) timer = setTimeout(() => tick(gen), current.every);
  }
  function start() {
    clearTimeout(timer);
    generation++;
    if (!document.hidden) tick(generation);
  }
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { clearTimeout(timer); generation++; } else start();
  });
  window.addEventListener("hashchange", route);
  refreshSession(true).catch((e) => refreshed(false, e));
  route();
})();
