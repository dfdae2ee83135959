// paceline dashboard: the jobs list and the job page. Plain DOM, no framework, no build.
// Data comes from the JSON API; live numbers from one server-sent event stream per page.
// Every value from the server is written with textContent, never parsed as HTML.
"use strict";

const TOKEN_KEY = "paceline-token";

// -- talking to the API -------------------------------------------------------------------

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}

let asking = null;
function askToken() {
  // One prompt however many calls were refused at once.
  if (asking) return asking;
  const box = document.getElementById("token-form");
  const form = box.querySelector("form");
  box.hidden = false;
  form.token.focus();
  asking = new Promise((resolve) => {
    form.addEventListener("submit", function done(event) {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, form.token.value.trim());
      form.token.value = "";
      box.hidden = true;
      form.removeEventListener("submit", done);
      asking = null;
      resolve();
    });
  });
  return asking;
}

async function call(method, path, body) {
  for (;;) {
    const options = { method, headers: authHeaders() };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    if (response.status === 401) {
      await askToken();
      continue;
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(data.error || response.status + " " + response.statusText);
      error.status = response.status;
      throw error;
    }
    return data;
  }
}

// A multipart POST with upload progress (fetch cannot report it).
function sendForm(path, formData, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 401) {
        askToken().then(() => sendForm(path, formData, onProgress).then(resolve, reject));
      } else if (xhr.status >= 200 && xhr.status < 300) {
        resolve(data);
      } else {
        reject(new Error(data.error || "HTTP " + xhr.status));
      }
    };
    xhr.onerror = () => reject(new Error("the server could not be reached"));
    xhr.send(formData);
  });
}

// Follow a server-sent event stream. EventSource cannot send the token, so each
// connection takes a short-lived ticket; a stream refused (ticket expired, server
// restarted) is opened again with a fresh one.
function follow(path, job, onStatus) {
  const live = document.getElementById("live");
  let source = null;
  async function open() {
    try {
      const { ticket } = await call("POST", "/api/tickets", { job });
      source = new EventSource(path + "?ticket=" + encodeURIComponent(ticket));
    } catch (err) {
      showMessage(err.message, true);
      if (err.status !== 404) setTimeout(open, 5000);  // an unknown job stays unknown
      return;
    }
    source.addEventListener("status", (event) => {
      live.classList.add("on");
      onStatus(JSON.parse(event.data));
    });
    source.onerror = () => {
      live.classList.remove("on");
      if (source.readyState === EventSource.CLOSED) setTimeout(open, 2000);
    };
  }
  open();
}

// -- formatting ----------------------------------------------------------------------------

const nf = new Intl.NumberFormat("en-US");
const num = (n) => nf.format(n || 0);

function rate(r) {
  if (r === null || r === undefined) return "–";
  return (r < 100 ? r.toFixed(1) : nf.format(Math.round(r))) + "/s";
}

function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const pad = (x) => String(x).padStart(2, "0");
  if (h >= 48) return Math.floor(h / 24) + "d" + pad(h % 24) + "h";
  return h ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
}

const money = (x) => "$" + (x || 0).toFixed(4);

function progress(s) {
  const finished = (s.done || 0) + (s.failed || 0) + (s.skipped || 0);
  const pct = s.total ? (100 * finished) / s.total : 0;
  return { finished, pct };
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setText(id, text) {
  document.getElementById(id).textContent = text;
}

function showMessage(text, bad) {
  const box = document.getElementById("message");
  box.textContent = text || "";
  box.className = "message" + (bad ? " bad" : text ? " ok" : "");
}

function badge(node, state) {
  node.textContent = state;
  node.className = "badge state-" + String(state).replace(/\s+/g, "-");
}

// -- the jobs list -------------------------------------------------------------------------

function jobsPage() {
  const body = document.querySelector("#jobs tbody");
  follow("/api/events", null, (data) => {
    if (data.error) return showMessage(data.error, true);
    body.replaceChildren(...data.jobs.map((s) => {
      const { pct } = progress(s);
      const run = s.run || {};
      const running = s.state === "running";
      const name = el("a", { href: "/jobs/" + encodeURIComponent(s.job) }, s.job);
      const state = el("span");
      badge(state, s.state);
      const bar = el("div", { class: "bar small" }, el("div", { class: "fill" }));
      bar.firstChild.style.width = pct.toFixed(1) + "%";
      return el("tr", { "data-job": s.job },
        el("td", {}, name),
        el("td", {}, state),
        el("td", { class: "wide" }, bar, el("span", { class: "pct" }, pct.toFixed(1) + " %"),
          el("span", { class: "dim" }, ` ${num(s.done + s.failed + s.skipped)}/${num(s.total)}`)),
        el("td", {}, running ? rate(run.rate_now || run.rate_avg) : "–"),
        el("td", {}, running ? duration(run.eta_seconds) : "–"),
        el("td", { class: s.failed ? "bad" : "" }, num(s.failed)),
        el("td", {}, money(s.cost_usd)));
    }));
  });
}

// -- one job -------------------------------------------------------------------------------

function jobPage() {
  const name = decodeURIComponent(location.pathname.split("/").pop());
  const base = "/api/jobs/" + encodeURIComponent(name);
  document.title = "paceline · " + name;
  setText("job-name", name);
  let last = null;
  let failedSeen = -1;

  const form = document.getElementById("start-form");
  const stop = document.getElementById("stop");
  const bar = document.getElementById("upload-progress");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData();
    const file = document.getElementById("file").files[0];
    if (file) data.append("file", file, file.name);
    data.append("mode", form.mode.value);
    if (form.mode.value === "parallel" && form.concurrency.value)
      data.append("concurrency", form.concurrency.value);
    document.getElementById("start").disabled = true;
    bar.hidden = !file;
    showMessage(file ? "uploading " + file.name + "…" : "starting…");
    try {
      const r = await sendForm(base + "/start", data, (f) => { bar.value = 100 * f; });
      let text = `run started (pid ${r.pid})`;
      if (r.upload) text += r.upload.new ? ` on ${r.upload.name}` : ` (${r.upload.name} was uploaded before: its items are known)`;
      showMessage(text);
      document.getElementById("file").value = "";
    } catch (err) {
      showMessage(err.message, true);
    } finally {
      bar.hidden = true;
      if (last) render(last);
      else document.getElementById("start").disabled = false;
    }
  });

  stop.addEventListener("click", async () => {
    stop.disabled = true;
    try {
      const r = await call("POST", base + "/stop");
      showMessage(r.asked
        ? `asked ${r.asked} worker(s) to stop: they finish the items in flight first`
        : "stopping the run that was starting");
    } catch (err) {
      showMessage(err.message, true);
      stop.disabled = false;
    }
  });

  document.getElementById("retry-all").addEventListener("click", async () => {
    try {
      const r = await call("POST", base + "/retry", {});
      showMessage(`${num(r.put_back)} failed item(s) put back: start a run to process them`);
      loadFailures();
    } catch (err) {
      showMessage(err.message, true);
    }
  });

  document.getElementById("expedite-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("expedite-ids");
    const ids = input.value.split(/[\s,]+/).filter(Boolean);
    try {
      const r = await call("POST", base + "/expedite", { ids });
      showMessage(ids.map((i) => `${i}: ${(r.invalid || []).includes(i)
        ? "an invalid line, nothing to run (fix it in the file)"
        : describeBefore(r.before[i])}`).join(" · "));
      input.value = "";
    } catch (err) {
      showMessage(err.message, true);
    }
  });

  async function retryOne(id) {
    try {
      const r = await call("POST", base + "/retry", { ids: [id] });
      const running = last && last.state === "running";
      showMessage(r.put_back
        ? `${id} put back first in line` + (running ? "" : ": start a run to process it")
        : (r.invalid || []).includes(id)
          ? `${id} is an invalid line, nothing to run: fix it in the file`
          : `${id} is not failed (${r.not_failed[id] || "unknown"})`);
      loadFailures();
    } catch (err) {
      showMessage(err.message, true);
    }
  }

  let failureLimit = 10;
  async function loadFailures() {
    let r;
    try {
      r = await call("GET", base + "/failures?limit=" + failureLimit);
    } catch (err) {
      return showMessage(err.message, true);
    }
    setText("failures-total", r.total ? `(${num(r.total)})` : "");
    setText("failure-kinds", Object.entries(r.kinds).map(([k, n]) => `${k}: ${num(n)}`).join(" · "));
    document.querySelector("#failures tbody").replaceChildren(...r.items.map((f) =>
      el("tr", { "data-id": f.id },
        el("td", { class: "mono" }, f.id),
        el("td", {}, f.attempts),
        el("td", { class: "error" }, f.error),
        el("td", {}, f.invalid
          ? el("span", { class: "dim", title: "fix the line in the file, then upload it again" }, "invalid line")
          : el("button", { type: "button", class: "small", onclick: () => retryOne(f.id) }, "Retry")))));
    document.getElementById("retry-all").disabled = !r.total;
    const more = document.getElementById("more-failures");
    more.hidden = r.total <= r.items.length || failureLimit >= 1000;
    more.textContent = `Show ${num(Math.min(r.total, 1000) - r.items.length)} more`;
  }

  document.getElementById("more-failures").addEventListener("click", () => {
    failureLimit = 1000;
    loadFailures();
  });

  function render(s) {
    last = s;
    if (s.error) return showMessage(s.error, true);
    const run = s.run || {};
    const running = s.state === "running";
    badge(document.getElementById("state"), s.stop_requested ? "stopping" : s.state);
    const { finished, pct } = progress(s);
    document.getElementById("bar-fill").style.width = pct.toFixed(2) + "%";
    document.getElementById("bar").setAttribute("aria-valuenow", pct.toFixed(1));
    setText("pct", pct.toFixed(1) + " %");
    setText("finished", `${num(finished)} / ${num(s.total)}${s.source_done ? "" : "+ (reading the source)"}`);
    for (const k of ["done", "failed", "pending", "running", "retrying", "skipped"]) setText(k, num(s[k]));
    setText("rate-now", running ? rate(run.rate_now) : "–");
    setText("rate-avg", s.run ? rate(run.rate_avg) : "–");
    setText("rate-peak", s.run ? rate(run.rate_peak) : "–");
    const ended = run.finished_at ? run.finished_at - run.started_at : null;
    setText("elapsed", duration(running ? run.elapsed : ended));
    setText("eta", running ? duration(run.eta_seconds) : s.total && !s.pending && !s.running ? "done" : "–");
    let cost = money(s.cost_usd);
    if (run.cost_per_item_usd) cost += ` · $${run.cost_per_item_usd.toFixed(5)}/item`;
    if (running && run.cost_per_minute_usd) cost += ` · $${run.cost_per_minute_usd.toFixed(4)}/min`;
    setText("cost", cost);

    document.getElementById("start").disabled = running;
    stop.disabled = !running || s.stop_requested;

    const upload = s.upload;
    document.getElementById("upload-box").hidden = !upload;
    if (upload) {
      const file = document.getElementById("file");
      file.accept = upload.format === "csv" ? ".csv,text/csv" : ".jsonl,.ndjson,.json,application/x-ndjson";
      setText("upload-label", `${upload.format.toUpperCase()} file` + (upload.id ? ` (ids in "${upload.id}")` : ""));
      setText("upload-files", upload.files.length
        ? "Received: " + upload.files.map((f) => `${f.name} (${num(f.bytes)} bytes)`).join(", ") +
          ". A new file adds its new ids; those already known are not run again."
        : "Nothing uploaded yet: choose a file to start.");
    }

    document.getElementById("no-keys").hidden = s.keys.length > 0;
    document.querySelector("#keys tbody").replaceChildren(...s.keys.map((k) =>
      el("tr", {},
        el("td", { class: "mono" }, k.key),
        el("td", { class: "key-" + String(k.state).split(" ")[0] }, k.state + (k.reason && k.state !== "ready" ? ` (${k.reason})` : "")),
        el("td", {}, num(k.requests)),
        el("td", {}, num(k.tokens)),
        el("td", {}, num(k.rate_limited)),
        el("td", {}, (k.today || []).map((d) => `${num(d.used)}/${num(d.limit)}${d.unit === "requests" ? "" : " " + d.unit}`).join(", ") || "–"),
        el("td", { class: "dim" }, (k.limits || []).join(", ") || "–"))));

    document.getElementById("workers-box").hidden = s.workers.length < 2;
    document.querySelector("#workers tbody").replaceChildren(...s.workers.map((w) =>
      el("tr", {},
        el("td", { class: "mono" }, w.worker), el("td", {}, w.host), el("td", {}, w.pid),
        el("td", {}, num(w.done)), el("td", {}, num(w.failed)), el("td", {}, num(w.in_flight)),
        el("td", {}, rate(w.rate_now)), el("td", {}, w.stopping || "running"))));

    document.getElementById("recent").replaceChildren(...(s.recent_failures.length
      ? s.recent_failures.map((f) => el("li", {}, el("span", { class: "mono" }, f.id), ` (attempts ${f.attempts}): `, el("span", { class: "error" }, f.error)))
      : [el("li", { class: "dim" }, "none")]));

    const where = document.getElementById("where");
    where.replaceChildren(
      el("div", {}, "job file ", el("code", {}, s.jobfile)),
      el("div", {}, "store ", el("code", {}, s.store)),
      s.run_log ? el("div", {}, "last run's log ", el("code", {}, s.run_log)) : null);

    if (s.failed !== failedSeen) {
      failedSeen = s.failed;
      loadFailures();
    }
  }

  follow(base + "/events", name, render);
}

function describeBefore(status) {
  if (status === null || status === undefined) return "not found (not read from the source yet?)";
  if (status === "done") return "already done";
  if (status === "running") return "in flight now";
  return `expedited (was ${status})`;
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.body.dataset.page === "job") jobPage();
  else jobsPage();
});
