"""The app's one page: self-contained HTML, CSS and JS (no CDN, no external asset of any kind).

What it shows beside the answer: what the served model learnt from (a banner when that was generated
images), its scores in sentences (``GET /model``'s ``summary``), links to the pipeline's report and
model card, the patient metadata inputs the model reads, and a table for several images at once.

Every API call goes through one wrapper (``api``) that speaks the bearer-token contract of
``serve.auth``: on a 401 whose ``WWW-Authenticate`` starts with ``Bearer`` it shows ``#token-form``,
keeps the token in ``sessionStorage`` (``melanoma-token``: once per tab) and retries the call; a
refused token is dropped and asked for again with the server's reason.
"""

from __future__ import annotations

import base64
import hashlib

TOKEN_STORAGE_KEY = "melanoma-token"

STYLE = """
  [hidden] { display: none !important; }  /* the attribute wins over the display rules below */
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f4f5f7; }
  header { background: #1d2330; color: #fff; padding: 14px 24px; }
  header h1 { margin: 0; font-size: 20px; }
  .notice { background: #fff4d6; border-left: 5px solid #e0a800; padding: 10px 24px; margin: 0; }
  .banner { background: #b3261e; color: #fff; font-size: 18px; font-weight: 700; padding: 14px 24px;
            margin: 0; border-bottom: 4px solid #7a1a14; }
  .banner p { margin: 0; }
  #token-form { background: #e8f0ff; border-left: 5px solid #3366cc; padding: 10px 24px; margin: 0; }
  #token-message { color: #b3261e; font-weight: 600; margin-left: 10px; }
  main { display: flex; gap: 24px; padding: 24px; flex-wrap: wrap; align-items: flex-start; }
  section { background: #fff; border-radius: 8px; padding: 18px; box-shadow: 0 1px 3px #0002; }
  #about { max-width: 560px; }
  #drop { width: 300px; height: 180px; border: 2px dashed #8a94a6; border-radius: 8px; display: flex;
          align-items: center; justify-content: center; text-align: center; cursor: pointer; color: #56607a; }
  #drop.over { background: #e8f0ff; border-color: #3366cc; }
  fieldset { border: 1px solid #c9ced8; border-radius: 6px; margin: 12px 0 0; width: 280px; }
  fieldset label { display: block; margin: 4px 0; }
  fieldset input, fieldset select { margin-left: 6px; }
  .hint { font-size: 12px; color: #56607a; margin: 4px 0; }
  .pics { display: flex; gap: 16px; flex-wrap: wrap; }
  .pics figure { margin: 0; }
  .pics img { width: 256px; height: 256px; object-fit: contain; background: #222; border-radius: 4px; }
  figcaption { font-size: 12px; color: #56607a; max-width: 256px; }
  #probability { font-size: 34px; font-weight: 700; }
  .melanoma { color: #b3261e; } .benign { color: #1e7b34; }
  #error { color: #b3261e; font-weight: 600; }
  .warning { color: #8a5a00; max-width: 640px; }
  table { border-collapse: collapse; font-size: 13px; }
  td, th { padding: 2px 10px 2px 0; text-align: left; vertical-align: top; }
  #batch-table td { vertical-align: middle; border-top: 1px solid #e3e6ec; padding: 4px 10px 4px 0; }
  img.thumb { width: 96px; height: 96px; background: #222; border-radius: 3px; }
  .links a { margin-right: 14px; }
  #metric-summary { padding-left: 18px; margin: 6px 0; }
  .hash { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
  #doc-view { white-space: pre-wrap; max-height: 420px; overflow: auto; background: #f4f5f7; padding: 10px;
              font-size: 12px; border-radius: 4px; }
"""

SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);
function setText(id, text) { $(id).textContent = text; }
const TOKEN_KEY = "@TOKEN_KEY@";
let memoryToken = null;  // when sessionStorage is unavailable (storage disabled): this page load only
let tokenWaiters = [];
let model = null;

function readToken() {
  try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return memoryToken; }
}
function storeToken(token) {
  memoryToken = token;
  try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* kept in memory */ }
}
function clearToken() {
  memoryToken = null;
  try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* nothing stored */ }
}

// Shows the token form; resolves once a token was entered. Calls waiting at the same time share it.
function askToken(message) {
  setText("token-message", message);
  $("token-form").hidden = false;
  $("token").focus();
  return new Promise((resolve) => tokenWaiters.push(resolve));
}
$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("token").value.trim();
  if (!token) { setText("token-message", "Enter the access token."); return; }
  storeToken(token);
  $("token").value = ""; setText("token-message", ""); $("token-form").hidden = true;
  const waiting = tokenWaiters; tokenWaiters = [];
  waiting.forEach((resolve) => resolve());
});

// Every API call goes through here: the bearer token when there is one, and the token form on a
// bearer challenge (then the same call again).
async function api(path, options = {}) {
  for (;;) {
    const token = readToken();
    const headers = new Headers(options.headers || {});
    if (token) headers.set("Authorization", "Bearer " + token);
    const r = await fetch(path, { ...options, headers });
    const challenge = r.headers.get("WWW-Authenticate") || "";
    if (r.status !== 401 || !/^bearer\\b/i.test(challenge)) return r;
    let detail = "";
    try { detail = (await r.json()).detail || ""; } catch (e) { /* no JSON body */ }
    if (!token) {
      await askToken("This app needs its access token.");
    } else if (readToken() === token) {  // not replaced meanwhile by another call's prompt
      clearToken();
      await askToken("That token was refused" + (detail ? " (" + detail + ")" : "") + ": enter it again.");
    }
  }
}

async function json(r) {
  try { return await r.json(); } catch (e) { return { detail: "HTTP " + r.status + " (not JSON)" }; }
}

function fixed(v, digits) { return typeof v === "number" ? v.toFixed(digits) : "unknown"; }

function showModel(m) {
  model = m;
  setText("model-name", m.name + " (" + m.family + ")");
  setText("model-version", m.version === null ? "model folder" : m.registered_model + " v" + m.version);
  $("model-version").dataset.version = String(m.version);
  setText("model-source", m.source);
  setText("model-threshold", fixed(m.threshold, 4));
  const banner = $("banner");
  banner.replaceChildren(...(m.warnings || []).map((w) => {
    const p = document.createElement("p"); p.textContent = w; return p;
  }));
  banner.hidden = !(m.warnings || []).length;
  const t = m.trained_on || {};
  setText("trained-on", t.name || "unknown");
  $("trained-on").className = t.source === "unknown" || !t.source ? "warning" : "";
  const counts = [];
  if (typeof t.n_train === "number") counts.push(t.n_train + " training");
  if (typeof t.n_val === "number") counts.push(t.n_val + " validation");
  setText("trained-counts", counts.length ? counts.join(", ") + " images" : "unknown");
  const lineage = m.lineage || {};
  setText("git-commit", lineage.git_commit ||
    (m.version === null ? "not recorded for a model folder" : "not recorded"));
  setText("run-id", lineage.run_id || "none");
  const hashes = $("data-hashes"); hashes.replaceChildren();
  for (const [k, v] of Object.entries(m.data_hashes || {})) {
    const line = document.createElement("div"); line.className = "hash";
    line.textContent = k + ": " + v; hashes.append(line);
  }
  if (!hashes.childElementCount) hashes.textContent = "unknown";
  $("metric-summary").replaceChildren(...(m.summary || []).map((s) => {
    const li = document.createElement("li"); li.textContent = s + "."; return li;
  }));
  const links = m.links || {};
  $("report-link").hidden = !links.report;
  $("card-link").hidden = !links.model_card;
  const table = $("metrics"); table.replaceChildren();
  for (const [k, v] of Object.entries(m.test_metrics || {})) {
    const row = table.insertRow(); row.insertCell().textContent = k;
    row.insertCell().textContent = typeof v === "number" ? (Number.isInteger(v) ? v : v.toFixed(4)) : v;
  }
  showPatientInputs(m.metadata || {});
}

// The optional patient inputs the model reads; the selects offer the categories it learnt.
function showPatientInputs(meta) {
  const used = new Set(meta.columns || []);
  const categories = meta.categories || {};
  $("age-row").hidden = !used.has("age_approx");
  for (const name of ["sex", "site"]) {
    const select = $(name), known = categories[name] || [];
    const keep = select.value;
    select.replaceChildren(new Option("not given", ""), ...known.map((c) => new Option(c, c)));
    select.value = known.includes(keep) ? keep : "";
    $(name + "-row").hidden = !used.has(name) || !known.length;
  }
  $("patient").hidden = !used.size;
}

async function loadModel() {
  let r;
  try { r = await api("/model"); } catch (e) { setText("error", "cannot reach the app: " + e); return; }
  if (!r.ok) { setText("error", "/model: " + ((await json(r)).detail || "HTTP " + r.status)); return; }
  showModel(await r.json());
}

function followVersion(answer) {
  if (answer.model && String(answer.model.version) !== $("model-version").dataset.version) loadModel();
}

function showWarnings(list) {
  $("warnings").replaceChildren(...[...new Set(list || [])].map((w) => {
    const p = document.createElement("p"); p.textContent = w; return p;
  }));
}

function patientFields(form) {
  const fields = { age_approx: "age", sex: "sex", site: "site" };
  for (const [field, id] of Object.entries(fields)) {
    const row = $(id === "age" ? "age-row" : id + "-row");
    const value = $(id).value.trim();
    if (!$("patient").hidden && !row.hidden && value) form.append(field, value);
  }
}

async function predictOne(file) {
  setText("error", ""); setText("status", "analysing " + file.name + " ...");
  $("batch").hidden = true; $("pics").hidden = false;
  $("preview").src = URL.createObjectURL(file);
  const form = new FormData(); form.append("file", file); patientFields(form);
  let r;
  try { r = await api("/predict?explain=true", { method: "POST", body: form }); }
  catch (e) { setText("status", ""); setText("error", "request failed: " + e); return; }
  const body = await json(r);
  setText("status", "");
  if (!r.ok) { $("result").hidden = true; setText("error", body.detail || ("HTTP " + r.status)); return; }
  $("result").hidden = false;
  setText("probability", (100 * body.probability).toFixed(1) + " %");
  setText("threshold", (100 * body.threshold).toFixed(1) + " %");
  const d = $("decision"); d.textContent = body.label; d.className = body.melanoma ? "melanoma" : "benign";
  showWarnings(body.warnings);
  const ex = body.explanation;
  if (ex) {
    $("heatmap").src = "data:image/png;base64," + ex.image_png_b64;
    setText("heatcaption", ex.kind + ": " + ex.note);
    setText("heat-summary", ex.summary ? Object.entries(ex.summary).map(([k, v]) => k + " " + v).join(" | ") : "");
  }
  followVersion(body);
}

// Several files: /predict/batch in chunks of the app's max_batch, one table row per image.
async function predictMany(files) {
  setText("error", ""); $("result").hidden = true; $("pics").hidden = true;
  const rows = $("batch-rows"); rows.replaceChildren(); $("batch").hidden = false;
  const size = (model && model.limits && model.limits.max_batch) || 4;
  const warnings = [];
  for (let i = 0; i < files.length; i += size) {
    const chunk = files.slice(i, i + size);
    setText("status", "analysing images " + (i + 1) + "-" + (i + chunk.length) + " of " + files.length + " ...");
    const form = new FormData();
    for (const f of chunk) form.append("files", f, f.name);
    let r;
    try { r = await api("/predict/batch?explain=true", { method: "POST", body: form }); }
    catch (e) { setText("status", ""); setText("error", "request failed: " + e); return; }
    const body = await json(r);
    if (!r.ok) { setText("status", ""); setText("error", body.detail || ("HTTP " + r.status)); return; }
    for (const res of body.results) rows.append(batchRow(res));
    warnings.push(...(body.warnings || []));
    followVersion(body);
  }
  setText("status", "");
  showWarnings(warnings);
}

function batchRow(res) {
  const tr = document.createElement("tr"); tr.className = "batch-row";
  tr.insertCell().textContent = res.filename;
  tr.insertCell().textContent = (100 * res.probability).toFixed(1) + " %";
  const decision = tr.insertCell(); decision.textContent = res.label;
  decision.className = res.melanoma ? "melanoma" : "benign";
  const cell = tr.insertCell();
  if (res.explanation && res.explanation.image_png_b64) {
    const img = document.createElement("img"); img.className = "thumb heat";
    img.alt = "heat map of " + res.filename; img.title = res.explanation.kind + ": " + res.explanation.note;
    img.src = "data:image/png;base64," + res.explanation.image_png_b64;
    cell.append(img);
  }
  return tr;
}

function predict(fileList) {
  const files = Array.from(fileList);
  if (files.length === 1) predictOne(files[0]);
  else if (files.length > 1) predictMany(files);
}

// The pipeline's report and model card, fetched through api() (the token travels with it) and
// shown as text here: a plain link would reach a token-protected route without the header.
async function showDocument(e) {
  e.preventDefault();
  const link = e.currentTarget, view = $("doc-view");
  if (!view.hidden && view.dataset.path === link.getAttribute("href")) { view.hidden = true; return; }
  const r = await api(link.getAttribute("href"));
  view.textContent = r.ok ? await r.text() : ((await json(r)).detail || "HTTP " + r.status);
  view.dataset.path = link.getAttribute("href"); view.hidden = false;
}
$("report-link").addEventListener("click", showDocument);
$("card-link").addEventListener("click", showDocument);

const drop = $("drop"), input = $("file");
drop.addEventListener("click", () => input.click());
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
input.addEventListener("change", () => { if (input.files.length) predict(input.files); input.value = ""; });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) predict(e.dataTransfer.files);
});
loadModel();
""".replace("@TOKEN_KEY@", TOKEN_STORAGE_KEY)


def csp_hash(text: str) -> str:
    """The CSP source that allows exactly this inline script or style block ('sha256-...')."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


# The CSP makes the browser enforce "nothing from elsewhere, nothing but this page's own code": the
# one script and the one style block by their hashes (so no injected inline code or event handler
# attribute can run), this origin for API calls, and the data:/blob: URLs the page makes itself
# (the preview and the heat maps).
CSP = (
    f"default-src 'none'; script-src {csp_hash(SCRIPT)}; style-src {csp_hash(STYLE)}; "
    "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

BODY = """
<header><h1>Melanoma classifier</h1></header>
<p class="notice" id="notice"><strong>Research tool, not a medical device.</strong> It has not been
clinically validated and must not be used to diagnose, treat or rule out any condition. See a
dermatologist about any skin lesion that worries you.</p>
<div id="banner" class="banner" role="alert" hidden></div>
<form id="token-form" hidden>
  <label for="token">Access token for this app</label>
  <input id="token" type="password" autocomplete="off" spellcheck="false">
  <button id="token-submit" type="submit">Use token</button>
  <span id="token-message" role="alert"></span>
</form>
<main>
  <section>
    <div id="drop" tabindex="0"><span>Drop JPEG or PNG images here<br>or click to choose<br>
      <small>(several at once: a table of results)</small></span></div>
    <input id="file" type="file" accept="image/jpeg,image/png" multiple hidden>
    <fieldset id="patient" hidden>
      <legend>Patient (optional; this model also reads them)</legend>
      <label id="age-row">age (years) <input id="age" type="number" min="0" max="120" step="1"></label>
      <label id="sex-row">sex <select id="sex"></select></label>
      <label id="site-row">site <select id="site"></select></label>
      <p class="hint">Sent with a single image; several images are judged on the images alone.</p>
    </fieldset>
    <p id="status"></p><p id="error" role="alert"></p>
    <div id="result" hidden>
      <div id="probability"></div>
      <div>P(melanoma) &mdash; decision at threshold <span id="threshold"></span>:
        <strong id="decision"></strong></div>
    </div>
    <div id="batch" hidden>
      <table id="batch-table">
        <thead><tr><th>file</th><th>P(melanoma)</th><th>decision</th><th>heat map</th></tr></thead>
        <tbody id="batch-rows"></tbody>
      </table>
    </div>
    <div id="warnings" class="warning" role="status"></div>
  </section>
  <section class="pics" id="pics">
    <figure><img id="preview" alt="your image"><figcaption>your image</figcaption></figure>
    <figure><img id="heatmap" alt="explanation"><figcaption id="heatcaption">explanation</figcaption>
      <p id="heat-summary" class="hint"></p></figure>
  </section>
  <section id="about">
    <h3>What you are looking at</h3>
    <table>
      <tr><td>model</td><td id="model-name">&hellip;</td></tr>
      <tr><td>version</td><td id="model-version">&hellip;</td></tr>
      <tr><td>source</td><td id="model-source"></td></tr>
      <tr><td>threshold</td><td id="model-threshold"></td></tr>
      <tr><td>trained on</td><td id="trained-on">&hellip;</td></tr>
      <tr><td>images</td><td id="trained-counts"></td></tr>
      <tr><td>git commit</td><td id="git-commit" class="hash"></td></tr>
      <tr><td>MLflow run</td><td id="run-id" class="hash"></td></tr>
      <tr><td>data</td><td id="data-hashes"></td></tr>
    </table>
    <h4>How well it did</h4>
    <ul id="metric-summary"></ul>
    <p class="links"><a id="report-link" href="/report" hidden>the pipeline's report</a>
      <a id="card-link" href="/model-card" hidden>model card</a>
      <a href="/docs">API docs</a> <a href="/openapi.json">OpenAPI</a></p>
    <pre id="doc-view" hidden></pre>
    <details><summary>All test metrics (raw)</summary><table id="metrics"></table></details>
  </section>
</main>
"""

PAGE = (
    '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    "<title>melanoma: research classifier</title>\n"
    # an empty icon: no /favicon.ico request (a 404, or a 401 when the app wants a token)
    '<link rel="icon" href="data:,">\n'
    f"<style>{STYLE}</style>\n</head>\n<body>{BODY}<script>{SCRIPT}</script>\n</body>\n</html>\n"
)
