"""The app's one page: self-contained HTML, CSS and JS (no CDN, no external asset of any kind)."""

from __future__ import annotations

# The CSP makes the browser enforce "nothing from elsewhere": only this origin, inline code and the
# data:/blob: URLs the page makes itself (the preview and the heat map).
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>melanoma: research classifier</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f4f5f7; }
  header { background: #1d2330; color: #fff; padding: 14px 24px; }
  header h1 { margin: 0; font-size: 20px; }
  .notice { background: #fff4d6; border-left: 5px solid #e0a800; padding: 10px 24px; margin: 0; }
  main { display: flex; gap: 24px; padding: 24px; flex-wrap: wrap; }
  section { background: #fff; border-radius: 8px; padding: 18px; box-shadow: 0 1px 3px #0002; }
  #drop { width: 300px; height: 220px; border: 2px dashed #8a94a6; border-radius: 8px; display: flex;
          align-items: center; justify-content: center; text-align: center; cursor: pointer; color: #56607a; }
  #drop.over { background: #e8f0ff; border-color: #3366cc; }
  .pics { display: flex; gap: 16px; flex-wrap: wrap; }
  .pics figure { margin: 0; }
  .pics img { width: 256px; height: 256px; object-fit: contain; background: #222; border-radius: 4px; }
  figcaption { font-size: 12px; color: #56607a; max-width: 256px; }
  #probability { font-size: 34px; font-weight: 700; }
  .melanoma { color: #b3261e; } .benign { color: #1e7b34; }
  #error { color: #b3261e; font-weight: 600; }
  .warning { color: #8a5a00; max-width: 640px; }
  table { border-collapse: collapse; font-size: 13px; }
  td { padding: 2px 10px 2px 0; }
</style>
</head>
<body>
<header><h1>Melanoma classifier</h1></header>
<p class="notice" id="notice"><strong>Research tool, not a medical device.</strong> It has not been
clinically validated and must not be used to diagnose, treat or rule out any condition. See a
dermatologist about any skin lesion that worries you.</p>
<main>
  <section>
    <div id="drop" tabindex="0">Drop a JPEG or PNG here<br>or click to choose one</div>
    <input id="file" type="file" accept="image/jpeg,image/png" hidden>
    <p id="status"></p><p id="error" role="alert"></p>
    <div id="result" hidden>
      <div id="probability"></div>
      <div>P(melanoma) &mdash; decision at threshold <span id="threshold"></span>:
        <strong id="decision"></strong></div>
      <p id="warnings" class="warning" role="status"></p>
    </div>
  </section>
  <section class="pics">
    <figure><img id="preview" alt="your image"><figcaption>your image</figcaption></figure>
    <figure><img id="heatmap" alt="explanation"><figcaption id="heatcaption">explanation</figcaption></figure>
  </section>
  <section>
    <h3>Model</h3>
    <table>
      <tr><td>name</td><td id="model-name">&hellip;</td></tr>
      <tr><td>version</td><td id="model-version">&hellip;</td></tr>
      <tr><td>source</td><td id="model-source"></td></tr>
      <tr><td>threshold</td><td id="model-threshold"></td></tr>
    </table>
    <h4>Test metrics</h4>
    <table id="metrics"></table>
    <p id="summary"></p>
    <p><a href="/docs">API docs</a> &middot; <a href="/openapi.json">OpenAPI</a></p>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function setText(id, text) { $(id).textContent = text; }

async function loadModel() {
  const r = await fetch("/model");
  if (!r.ok) return;
  const m = await r.json();
  setText("model-name", m.name + " (" + m.family + ")");
  setText("model-version", m.version === null ? "model folder" : m.registered_model + " v" + m.version);
  setText("model-source", m.source);
  setText("model-threshold", m.threshold.toFixed(4));
  const t = $("metrics"); t.replaceChildren();
  for (const [k, v] of Object.entries(m.test_metrics)) {
    const row = t.insertRow(); row.insertCell().textContent = k;
    row.insertCell().textContent = typeof v === "number" ? (Number.isInteger(v) ? v : v.toFixed(4)) : v;
  }
}

async function predict(file) {
  setText("error", ""); setText("status", "analysing " + file.name + " ...");
  $("preview").src = URL.createObjectURL(file);
  const form = new FormData(); form.append("file", file);
  let r;
  try { r = await fetch("/predict?explain=true", { method: "POST", body: form }); }
  catch (e) { setText("status", ""); setText("error", "request failed: " + e); return; }
  const body = await r.json();
  setText("status", "");
  if (!r.ok) { $("result").hidden = true; setText("error", body.detail || ("HTTP " + r.status)); return; }
  $("result").hidden = false;
  setText("probability", (100 * body.probability).toFixed(1) + " %");
  setText("threshold", (100 * body.threshold).toFixed(1) + " %");
  const d = $("decision"); d.textContent = body.label; d.className = body.melanoma ? "melanoma" : "benign";
  setText("warnings", (body.warnings || []).join(" "));
  const ex = body.explanation;
  if (ex) {
    $("heatmap").src = "data:image/png;base64," + ex.image_png_b64;
    setText("heatcaption", ex.kind + ": " + ex.note);
    setText("summary", ex.summary ? Object.entries(ex.summary).map(([k, v]) => k + " " + v).join(" | ") : "");
  }
  if (body.model.version !== $("model-version").dataset.version) {
    $("model-version").dataset.version = body.model.version; loadModel();
  }
}

const drop = $("drop"), input = $("file");
drop.addEventListener("click", () => input.click());
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
input.addEventListener("change", () => { if (input.files.length) predict(input.files[0]); });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) predict(e.dataTransfer.files[0]);
});
loadModel();
</script>
</body>
</html>
"""
