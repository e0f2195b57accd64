// The Interlock web console: a hash-routed page per view, built from the client API.
// Everything shown from the API goes into the page as text nodes (never as HTML), so
// blueprint and job data cannot inject markup or script.
import { drawGraph, graphvizOnlineUrl } from "./graph.js";
import { example, validate } from "./schema.js";

const TOKEN_KEY = "interlock.clientToken";
const POLL_S = 25; // how long a long poll may be held by the server
const WORKERS_MS = 2000; // how often the workers page asks again (heartbeats are not job changes)
const STATUSES = ["queued", "running", "retrying", "waiting", "waiting_for_human", "paused", "finished", "failed", "cancelled"];
const TERMINAL = new Set(["finished", "failed", "cancelled"]);
const app = document.getElementById("app");

// -- the page's life: one view at a time, whose timers stop when another view starts ------

let view = { alive: false, timers: [], abort: new AbortController() };

function newView() {
  view.alive = false;
  view.timers.forEach(clearTimeout);
  view.abort.abort();
  view = { alive: true, timers: [], abort: new AbortController() };
  return view;
}

const pause = (current, ms) => new Promise((resolve) => current.timers.push(setTimeout(resolve, ms)));

// Follow a long poll while the view lives: `poll(since, signal)` answers (with its `change`)
// once something changed since `since`; `apply(answer)` shows it. Errors are shown and the
// poll tries again a little later. Returns a function that restarts the poll (new filters).
function follow(current, poll, apply) {
  let controller = null;
  const run = async (mine) => {
    let since = null;
    while (current.alive && !mine.signal.aborted) {
      try {
        const answer = await poll(since, mine.signal);
        if (!current.alive || mine.signal.aborted) return;
        if (answer.change !== since) {
          since = answer.change;
          if (await apply(answer)) return; // nothing more can change
        }
      } catch (error) {
        if (!current.alive || mine.signal.aborted || error instanceof SignedOut) return;
        showProblem(error);
        await pause(current, 2000);
      }
    }
  };
  const restart = () => {
    if (controller) controller.abort();
    controller = new AbortController();
    current.abort.signal.addEventListener("abort", () => controller.abort(), { once: true });
    return run(controller);
  };
  return restart;
}

// Run `refresh` now and again every `ms` while the view lives (pages without a long poll).
function every(current, ms, refresh) {
  const tick = async () => {
    if (!current.alive) return;
    try {
      await refresh();
    } catch (error) {
      if (!(error instanceof SignedOut)) showProblem(error);
    }
    if (current.alive) current.timers.push(setTimeout(tick, ms));
  };
  return tick();
}

// -- DOM building, text only ----------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const pretty = (value) => h("pre", { class: "json" }, JSON.stringify(value, null, 2));
const badge = (status) => h("span", { class: `badge ${status}`, "data-status": status }, status);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const short = (id) => (id && id.length > 12 ? id.slice(0, 12) + "…" : id || "");

function show(...children) {
  app.replaceChildren(...children);
}

function showProblem(error) {
  const box = document.getElementById("problem");
  const text = error instanceof ApiError ? `${error.code}: ${error.message}` : String(error.message || error);
  if (box) box.textContent = text;
  else app.prepend(h("p", { id: "problem", class: "error", role: "alert" }, text));
}

// -- the API, with the token of this tab --------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || `http_${status}`;
    this.details = error.details;
  }
}
class SignedOut extends Error {}

const token = () => sessionStorage.getItem(TOKEN_KEY);

async function api(path, { method = "GET", body, text = false, tokenValue, signal } = {}) {
  const headers = { "X-Client-Token": tokenValue || token() || "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch("/api/v1" + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
    signal: signal || view.abort.signal,
  });
  if (response.status === 401 && !tokenValue) {
    sessionStorage.removeItem(TOKEN_KEY);
    navigate("#/signin");
    throw new SignedOut();
  }
  if (!response.ok) {
    let payload = null;
    try { payload = await response.json(); } catch { /* not JSON */ }
    throw new ApiError(response.status, payload);
  }
  return text ? response.text() : response.json();
}

// -- sign-in ---------------------------------------------------------------------------------

function signIn(current, next) {
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "off", required: true });
  const message = h("p", { id: "signin-error", class: "error", role: "alert" });
  const form = h(
    "form",
    {
      class: "signin",
      onsubmit: async (event) => {
        event.preventDefault();
        message.textContent = "";
        try {
          await api("/blueprints", { tokenValue: input.value });
        } catch (error) {
          message.textContent = error.status === 401 ? "This client token is not valid." : String(error.message);
          return;
        }
        sessionStorage.setItem(TOKEN_KEY, input.value);
        navigate(next && next !== "#/signin" ? next : "#/jobs");
      },
    },
    h("label", { for: "token" }, "Client token (X-Client-Token)"),
    input,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    h("p", { class: "muted" }, "The token stays in this browser tab only (sessionStorage) and is sent as a header, never in a URL."),
    message,
  );
  show(h("h1", {}, "Sign in"), form);
  input.focus();
}

// -- blueprints ------------------------------------------------------------------------------

async function blueprints(current) {
  const { blueprints: list } = await api("/blueprints");
  if (!current.alive) return;
  const rows = list.map((bp) =>
    h("tr", {},
      h("td", {}, h("a", { href: `#/blueprints/${encodeURIComponent(bp.name)}` }, bp.name)),
      h("td", {}, bp.version),
      h("td", { class: "mono", title: bp.content_hash }, short(bp.content_hash)),
      h("td", { class: "mono" }, bp.api_endpoint),
      h("td", {}, bp.description || ""),
    ),
  );
  show(
    h("h1", {}, "Blueprints"),
    h("table", { id: "blueprints" },
      h("thead", {}, h("tr", {}, ["name", "version", "content hash", "endpoint", "description"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows),
    ),
  );
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = h("textarea", { readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

async function blueprint(current, name) {
  const [bp, dot] = await Promise.all([
    api(`/blueprints/${encodeURIComponent(name)}`),
    api(`/blueprints/${encodeURIComponent(name)}/graph`, { text: true }),
  ]);
  if (!current.alive) return;
  const graph = h("div", { class: "graph", id: "graph" }, h("span", { class: "muted" }, "Drawing…"));
  const copied = h("span", { class: "muted", id: "copied" });
  const schema = bp.input_schema || { type: "object" };
  const data = h("textarea", { id: "initial-data", "aria-label": "initial_data (JSON)", spellcheck: "false" });
  data.value = JSON.stringify(example(schema) ?? {}, null, 2);
  const problems = h("ul", { class: "problems", id: "submit-problems", role: "alert" });
  const submit = async (event) => {
    event.preventDefault();
    problems.replaceChildren();
    let value;
    try {
      value = JSON.parse(data.value);
    } catch (error) {
      problems.append(h("li", {}, `initial_data is not valid JSON: ${error.message}`));
      return;
    }
    const found = typeOf(value) === "object" ? validate(schema, value, "$") : [{ path: "$", message: "must be a JSON object" }];
    if (found.length) {
      problems.append(...found.map((p) => h("li", {}, `${p.path}: ${p.message}`)));
      return;
    }
    try {
      const answer = await api(`/${bp.api_endpoint}`, { method: "POST", body: { initial_data: value } });
      location.hash = `#/jobs/${encodeURIComponent(answer.job_id)}`;
    } catch (error) {
      if (error instanceof SignedOut) return;
      const details = Array.isArray(error.details) ? error.details : [];
      problems.append(h("li", {}, error.message), ...details.map((p) => h("li", {}, `${p.path}: ${p.message}`)));
    }
  };
  show(
    h("h1", {}, `Blueprint ${bp.name} `, h("span", { class: "muted" }, `v${bp.version}`)),
    h("p", {}, bp.description || ""),
    h("p", { class: "muted mono" }, `POST /api/v1/${bp.api_endpoint} · ${bp.content_hash}`),
    h("div", { class: "cols" },
      h("section", {},
        h("h2", {}, "Graph"),
        graph,
        h("div", { class: "row" },
          h("button", { type: "button", id: "copy-dot", onclick: async () => { copied.textContent = (await copyText(dot)) ? "DOT copied" : "copy failed"; } }, "Copy DOT"),
          h("a", { id: "graphviz-online", href: graphvizOnlineUrl(dot), target: "_blank", rel: "noopener noreferrer" }, "Open in Graphviz Online"),
          copied,
        ),
        h("h2", {}, "States"),
        h("table", {},
          h("thead", {}, h("tr", {}, ["state", "kind", "summary", "transitions"].map((c) => h("th", {}, c)))),
          h("tbody", {}, bp.states.map((s) => h("tr", {},
            h("td", { class: "mono" }, s.name), h("td", {}, s.kind), h("td", {}, s.summary || ""),
            h("td", { class: "mono" }, s.transitions.map((t) => `${t.on} → ${t.to}`).join(", "))))),
        ),
      ),
      h("section", {},
        h("h2", {}, "Submit a job"),
        h("form", { id: "submit-job", onsubmit: submit },
          h("label", { for: "initial-data" }, "initial_data (JSON), checked against the input schema before it is sent"),
          data,
          problems,
          h("button", { type: "submit", class: "primary" }, "Submit job"),
        ),
        h("h2", {}, "Input schema"),
        pretty(schema),
      ),
    ),
  );
  drawGraph(graph, dot).catch((error) => { graph.textContent = `The graph could not be drawn: ${error.message}`; });
}

function typeOf(value) {
  if (value === null) return "null";
  return Array.isArray(value) ? "array" : typeof value;
}

// -- jobs --------------------------------------------------------------------------------------

async function jobs(current, query) {
  const status = query.get("status") || "";
  const wanted = query.get("blueprint") || "";
  const cursors = [null]; // the cursor of each page seen, to go back
  let page = 0;
  const body = h("tbody");
  const more = h("button", { type: "button", id: "next-page" }, "Older →");
  const back = h("button", { type: "button", id: "prev-page" }, "← Newer");
  const stamp = h("span", { class: "live", id: "live" });
  let next = null;
  const go = (params) => {
    const q = new URLSearchParams(query);
    for (const [k, v] of Object.entries(params)) (v ? q.set(k, v) : q.delete(k));
    location.hash = `#/jobs?${q}`;
  };
  const statusSelect = h("select", { id: "filter-status", "aria-label": "status", onchange: (e) => go({ status: e.target.value }) },
    h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  const blueprintOptions = (names) => [h("option", { value: "" }, "any blueprint"), names.map((name) => h("option", { value: name, selected: name === wanted }, name))];
  const blueprintSelect = h("select", { id: "filter-blueprint", "aria-label": "blueprint", onchange: (e) => go({ blueprint: e.target.value }) },
    blueprintOptions(wanted ? [wanted] : []));
  // The blueprint names arrive alongside the first page of jobs, not before it.
  api("/blueprints").then(({ blueprints: list }) => {
    if (current.alive) blueprintSelect.replaceChildren(...blueprintOptions(list.map((bp) => bp.name)));
  }).catch((error) => { if (!(error instanceof SignedOut) && current.alive) showProblem(error); });
  const poll = (since, signal) => {
    const q = new URLSearchParams({ limit: "50", wait: String(POLL_S) });
    if (status) q.set("status", status);
    if (wanted) q.set("blueprint", wanted);
    if (cursors[page]) q.set("cursor", cursors[page]);
    if (since) q.set("since", since);
    return api(`/jobs?${q}`, { signal });
  };
  const apply = (answer) => {
    next = answer.next_cursor;
    more.disabled = !next;
    back.disabled = page === 0;
    body.replaceChildren(...answer.jobs.map((job) => h("tr", { "data-job": job.id },
      h("td", { class: "mono" }, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, short(job.id))),
      h("td", {}, job.blueprint), h("td", {}, badge(job.status)), h("td", { class: "mono" }, job.state || ""),
      h("td", {}, when(job.created_at)), h("td", {}, when(job.updated_at)),
      h("td", { class: "error" }, job.error ? `${job.error.code}: ${job.error.message}` : ""),
    )));
    if (!answer.jobs.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No jobs.")));
    stamp.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
    return false;
  };
  const restart = follow(current, poll, apply);
  more.addEventListener("click", () => { if (next) { cursors[page + 1] = next; page += 1; restart(); } });
  back.addEventListener("click", () => { if (page > 0) { page -= 1; restart(); } });
  show(
    h("h1", {}, "Jobs"),
    h("div", { class: "row" }, statusSelect, blueprintSelect, stamp),
    h("table", { id: "jobs" },
      h("thead", {}, h("tr", {}, ["job", "blueprint", "status", "state", "created", "updated", "error"].map((c) => h("th", {}, c)))),
      body),
    h("div", { class: "row" }, back, more),
  );
  restart();
}

function eventLine(event) {
  const parts = [];
  if (event.state) parts.push(`state ${event.state}`);
  if (event.task_type) parts.push(`task ${event.task_type}`);
  if (event.attempt !== undefined) parts.push(`attempt ${event.attempt}`);
  if (event.worker) parts.push(`worker ${event.worker}`);
  if (event.duration_ms !== undefined) parts.push(`${event.duration_ms} ms`);
  if (event.via) parts.push(`via ${event.via}`);
  if (event.to) parts.push(`→ ${event.to}`);
  if (event.decision) parts.push(`decision ${event.decision}`);
  if (event.reason) parts.push(`reason ${event.reason}`);
  if (typeof event.message === "string") parts.push(event.message);
  const error = event.error ? (typeof event.error === "object" ? `${event.error.code || ""}: ${event.error.message || ""}` : String(event.error)) : null;
  const progress = typeof event.progress === "number" ? event.progress : null;
  return h("li", { "data-event": event.event },
    h("span", { class: "when" }, when(event.timestamp)),
    h("span", { class: "what" }, event.event), " ",
    h("span", {}, parts.join(" · ")),
    progress !== null ? h("progress", { max: progress > 1 ? 100 : 1, value: progress }) : null,
    error ? h("div", { class: "fail" }, error) : null,
  );
}

async function job(current, id) {
  const title = h("h1", {}, "Job ", h("span", { class: "mono" }, id));
  const summary = h("p", { id: "job-summary" });
  const actions = h("div", { class: "row", id: "actions" });
  const graph = h("div", { class: "graph", id: "graph" }, h("span", { class: "muted" }, "Drawing…"));
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const input = h("div", { id: "initial-data" });
  const outcome = h("div", { id: "outcome" });
  const stamp = h("span", { class: "live", id: "live" });
  show(
    title, summary, actions,
    h("div", { class: "cols" },
      h("section", {}, h("h2", {}, "Path"), graph, h("h2", {}, "History ", stamp), timeline),
      h("section", {}, h("h2", {}, "Outcome"), outcome, h("h2", {}, "initial_data"), input),
    ),
  );
  let last = null;
  let lastDot = null;
  let ended = false;
  const act = async (path, body) => {
    try {
      await api(`/jobs/${encodeURIComponent(id)}/${path}`, { method: "POST", body });
      await refresh();
    } catch (error) {
      if (!(error instanceof SignedOut)) showProblem(error);
    }
  };
  const refresh = async () => {
    const [doc, history, dot] = await Promise.all([
      api(`/jobs/${encodeURIComponent(id)}?include=initial_data`),
      api(`/jobs/${encodeURIComponent(id)}/history`),
      api(`/jobs/${encodeURIComponent(id)}/graph`, { text: true }),
    ]);
    if (!current.alive) return;
    ended = TERMINAL.has(doc.status);
    summary.replaceChildren(
      badge(doc.status), " ",
      h("a", { href: `#/blueprints/${encodeURIComponent(doc.blueprint)}` }, `${doc.blueprint} v${doc.version}`),
      doc.state ? ` · state ${doc.state}` : "",
      ` · created ${when(doc.created_at)}`,
      doc.finished_at ? ` · ended ${when(doc.finished_at)}` : "",
      doc.parent_job_id ? h("a", { href: `#/jobs/${encodeURIComponent(doc.parent_job_id)}` }, " · parent job") : "",
      doc.subflow && doc.subflow.child_job_id ? h("a", { href: `#/jobs/${encodeURIComponent(doc.subflow.child_job_id)}` }, " · child job") : "",
    );
    const key = JSON.stringify([doc.status, doc.approval && doc.approval.decisions]);
    if (key !== last) {
      last = key;
      const buttons = [];
      if (doc.approval && doc.status === "waiting_for_human") {
        buttons.push(h("span", { id: "approval-message" }, doc.approval.message || "A decision is needed:"));
        for (const decision of doc.approval.decisions || []) {
          buttons.push(h("button", { type: "button", class: "primary", "data-decision": decision, onclick: () => act("approval", { decision }) }, decision));
        }
      }
      if (!ended) buttons.push(h("button", { type: "button", class: "danger", id: "cancel", onclick: () => act("cancel") }, "Cancel job"));
      actions.replaceChildren(...buttons);
    }
    if (!ended && doc.progress && typeof doc.progress.progress === "number") {
      const p = doc.progress.progress;
      summary.append(" · progress ", h("progress", { id: "progress", max: p > 1 ? 100 : 1, value: p }));
    }
    timeline.replaceChildren(...history.events.map(eventLine));
    const parts = [];
    if (doc.error) parts.push(h("p", { class: "error", id: "job-error" }, `${doc.error.code}: ${doc.error.message}`), pretty(doc.error));
    if ("result" in doc) parts.push(h("h3", {}, "result"), pretty(doc.result));
    if (!parts.length) parts.push(h("p", { class: "muted" }, "The job has not ended yet."));
    outcome.replaceChildren(...parts);
    input.replaceChildren(pretty(doc.initial_data));
    if (dot !== lastDot) {
      lastDot = dot;
      await drawGraph(graph, dot).catch((error) => { graph.textContent = `The graph could not be drawn: ${error.message}`; });
    }
    stamp.textContent = ended ? "(ended)" : `live · ${new Date().toLocaleTimeString()}`;
  };
  const poll = (since, signal) => {
    const q = new URLSearchParams({ wait: String(POLL_S) });
    if (since) q.set("since", since);
    return api(`/jobs/${encodeURIComponent(id)}/changes?${q}`, { signal });
  };
  follow(current, poll, async () => { await refresh(); return ended; })();
}

// -- workers -------------------------------------------------------------------------------------

async function workers(current) {
  const people = h("tbody");
  const queues = h("tbody");
  const stamp = h("span", { class: "live", id: "live" });
  show(
    h("h1", {}, "Workers ", stamp),
    h("table", { id: "workers" },
      h("thead", {}, h("tr", {}, ["worker", "type", "task types", "connected", "last heartbeat", "tasks held"].map((c) => h("th", {}, c)))),
      people),
    h("h2", {}, "Queues"),
    h("table", { id: "queues" },
      h("thead", {}, h("tr", {}, ["task type", "waiting tasks", "a connected worker serves it"].map((c) => h("th", {}, c)))),
      queues),
  );
  await every(current, WORKERS_MS, async () => {
    const answer = await api("/workers");
    if (!current.alive) return;
    people.replaceChildren(...answer.workers.map((w) => h("tr", { "data-worker": w.id },
      h("td", { class: "mono" }, w.id), h("td", {}, w.worker_type), h("td", {}, w.task_types.join(", ")),
      h("td", {}, w.connected ? "yes" : "no (silent)"), h("td", {}, when(w.last_heartbeat)),
      h("td", { class: "mono" }, `${w.tasks_held}`))));
    if (!answer.workers.length) people.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No worker is registered.")));
    queues.replaceChildren(...answer.queues.map((q) => h("tr", { "data-queue": q.task_type },
      h("td", { class: "mono" }, q.task_type), h("td", {}, q.depth), h("td", {}, q.workers ? "yes" : "no"))));
    stamp.textContent = `live · ${new Date().toLocaleTimeString()}`;
  });
}

// -- routing ---------------------------------------------------------------------------------------

async function route() {
  const current = newView();
  const hash = location.hash || "#/jobs";
  const [pathPart, queryPart] = hash.slice(1).split("?");
  const parts = pathPart.split("/").filter(Boolean).map(decodeURIComponent);
  const query = new URLSearchParams(queryPart || "");
  const nav = document.getElementById("nav");
  nav.hidden = !token();
  for (const link of nav.querySelectorAll("a")) {
    if (link.dataset.nav === parts[0]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!token() || parts[0] === "signin") {
    signIn(current, token() ? "#/jobs" : hash);
    return;
  }
  try {
    if (parts[0] === "blueprints" && parts[1]) await blueprint(current, parts[1]);
    else if (parts[0] === "blueprints") await blueprints(current);
    else if (parts[0] === "jobs" && parts[1]) await job(current, parts[1]);
    else if (parts[0] === "workers") await workers(current);
    else if (parts[0] === "jobs" || !parts[0]) await jobs(current, query);
    else show(h("h1", {}, "Not found"), h("p", {}, "No such page."));
  } catch (error) {
    if (error instanceof SignedOut) return;
    if (current.alive) show(h("h1", {}, "Something went wrong"), h("p", { class: "error", role: "alert" }, error instanceof ApiError ? `${error.code}: ${error.message}` : String(error)));
  }
}

// Go to `hash`, drawing the page again when it is the one shown already.
function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  navigate("#/signin");
});
window.addEventListener("hashchange", route);
route();
