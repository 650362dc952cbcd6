"""The web page at `/`: one self-contained HTML file (no fonts or scripts from anywhere else), talking to the
same APIs as any other client: chat (streamed, with a stop button and markdown), classify an image or PDF,
ask a document index with clickable citations, and the loss curves of training runs."""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>firstepoch</title>
<style>
:root { --fg:#1d232a; --muted:#66707a; --line:#d8dde3; --accent:#2f6fdb; --bg:#f7f8fa; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color:var(--fg); background:var(--bg); }
header { display:flex; gap:1.5rem; align-items:center; padding:.6rem 1.2rem; background:#fff; border-bottom:1px solid var(--line); }
header b { font-size:1.1rem; }
nav button { border:0; background:none; padding:.4rem .7rem; cursor:pointer; color:var(--muted); font:inherit; }
nav button.on { color:var(--fg); border-bottom:2px solid var(--accent); }
main { max-width:900px; margin:1rem auto; padding:0 1rem; }
section { display:none; } section.on { display:block; }
.row { display:flex; gap:.5rem; margin:.5rem 0; align-items:center; }
textarea, input[type=text], input[type=password], select { font:inherit; padding:.45rem .6rem; border:1px solid var(--line); border-radius:6px; background:#fff; }
textarea { flex:1; min-height:2.6rem; resize:vertical; }
button.go { background:var(--accent); color:#fff; border:0; border-radius:6px; padding:.5rem 1rem; cursor:pointer; font:inherit; }
button.go:disabled { opacity:.5; cursor:default; }
#log { background:#fff; border:1px solid var(--line); border-radius:8px; padding:.8rem; min-height:12rem; max-height:60vh; overflow:auto; }
.msg { margin:.4rem 0; } .msg .who { font-weight:600; margin-right:.4rem; color:var(--muted); }
.msg.assistant .body { white-space:normal; } pre { background:#f0f2f5; padding:.5rem; border-radius:6px; overflow:auto; }
code { background:#f0f2f5; padding:0 .2rem; border-radius:3px; }
#drop { border:2px dashed var(--line); border-radius:8px; padding:2rem; text-align:center; color:var(--muted); background:#fff; cursor:pointer; }
#drop.over { border-color:var(--accent); }
.bar { height:.9rem; background:var(--accent); border-radius:3px; }
table.probs td { padding:.1rem .5rem; } .muted { color:var(--muted); font-size:.9em; }
.cite { color:var(--accent); cursor:pointer; text-decoration:underline; }
#passage { white-space:pre-wrap; background:#fff; border:1px solid var(--line); border-radius:8px; padding:.6rem; display:none; }
#page { max-width:100%; border:1px solid var(--line); border-radius:8px; display:none; margin-top:.4rem; }
#quote { border-left:3px solid #d9b300; padding-left:.6rem; margin:.4rem 0; display:none; }
canvas { background:#fff; border:1px solid var(--line); border-radius:8px; }
</style></head>
<body>
<header><b>firstepoch</b>
<nav><button data-tab="chat" class="on">Chat</button><button data-tab="classify">Classify</button>
<button data-tab="ask">Ask documents</button><button data-tab="runs">Runs</button></nav>
<span id="status" class="muted" style="flex:1"></span><input id="key" type="password" placeholder="API key (if set)" size="14"></header>
<main>
<section id="chat" class="on">
  <div class="row"><label>Model <select id="chat-model"></select></label>
  <label class="muted">temperature <input id="temp" type="text" value="0.7" size="3"></label>
  <button id="clear" class="go" style="background:#888">Clear</button></div>
  <div id="log"></div>
  <div class="row"><textarea id="prompt" placeholder="Message (Enter to send, Shift+Enter for a new line)"></textarea>
  <button id="send" class="go">Send</button><button id="stop" class="go" style="background:#b33" disabled>Stop</button></div>
</section>
<section id="classify">
  <div class="row"><label>Model <select id="predict-model"></select></label></div>
  <div id="drop">Drop an image or PDF here, or click to choose one<input id="file" type="file" hidden accept="image/*,.pdf"></div>
  <div id="prediction"></div>
</section>
<section id="ask">
  <div class="row"><label>Index <select id="index"></select></label></div>
  <div class="row"><textarea id="question" placeholder="Question about your documents"></textarea><button id="ask-go" class="go">Ask</button></div>
  <div id="answer" class="msg"></div><div id="quote"></div><div id="sources"></div><div id="passage"></div><img id="page" alt="the cited page">
</section>
<section id="runs">
  <div class="row"><label>Run <select id="run"></select></label></div>
  <canvas id="plot" width="860" height="360"></canvas><div id="run-info" class="muted"></div>
</section>
</main>
<script>
const $ = (id) => document.getElementById(id);
const esc = (s) => s.replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
$("key").value = sessionStorage.getItem("firstepoch-key") || "";
$("key").onchange = () => { sessionStorage.setItem("firstepoch-key", $("key").value); load(); };
const headers = (json) => { const h = json ? {"Content-Type": "application/json"} : {};
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value; return h; };
async function api(path, body) {
  const r = await fetch(path, body === undefined ? {headers: headers(false)} :
                              {method: "POST", headers: headers(true), body: JSON.stringify(body)});
  if (!r.ok) { let m = r.status + ""; try { const e = await r.json(); m = e.error.message || e.error; } catch (x) {} throw new Error(m); }
  return r;
}
function markdown(text) {  // escaped first, then a few safe constructs
  const parts = esc(text).split("```");
  return parts.map((p, i) => i % 2 ? "<pre><code>" + p.replace(/^[a-z]*\n/, "") + "</code></pre>" :
    p.replace(/`([^`]+)`/g, "<code>$1</code>").replace(/\*\*([^*]+)\*\*/g, "<b>$1</b>")
     .replace(/^\s*[-*] (.*)$/gm, "&bull; $1").replace(/\n/g, "<br>")).join("");
}
document.querySelectorAll("nav button").forEach((b) => b.onclick = () => {
  document.querySelectorAll("nav button, section").forEach((e) => e.classList.remove("on"));
  b.classList.add("on"); $(b.dataset.tab).classList.add("on"); if (b.dataset.tab === "runs") loadRuns();
});
function fill(select, names) { select.innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join(""); }
async function load() {
  try {
    const models = (await (await api("/v1/models")).json()).data;
    fill($("chat-model"), models.filter((m) => m.kind === "llm").map((m) => m.id));
    fill($("predict-model"), models.filter((m) => m.kind === "classifier" || m.kind === "regressor").map((m) => m.id));
    const health = await (await api("/health")).json();
    fill($("index"), Object.entries(health.models).filter(([n, m]) => m.kind === "index").map(([n]) => n));
    $("status").textContent = "";
  } catch (e) { $("status").textContent = "Could not list models: " + e.message; }
}
// ---- chat: OpenAI-style streaming over server-sent events
let history = [], controller = null;
function addMessage(role, text) {
  const div = document.createElement("div"); div.className = "msg " + role;
  div.innerHTML = `<span class="who">${role === "user" ? "you" : "model"}</span><span class="body"></span>`;
  div.querySelector(".body").innerHTML = markdown(text); $("log").appendChild(div); return div.querySelector(".body");
}
async function send() {
  const text = $("prompt").value.trim(); if (!text || controller) return;
  $("prompt").value = ""; history.push({role: "user", content: text}); addMessage("user", text);
  const out = addMessage("assistant", ""); let answer = "";
  controller = new AbortController(); $("send").disabled = true; $("stop").disabled = false;
  try {
    const r = await fetch("/v1/chat/completions", {method: "POST", headers: headers(true), signal: controller.signal,
      body: JSON.stringify({model: $("chat-model").value, messages: history, stream: true,
                            temperature: parseFloat($("temp").value) || 0})});
    if (!r.ok) { const e = await r.json(); throw new Error(e.error.message); }
    const reader = r.body.getReader(), decoder = new TextDecoder(); let buffer = "";
    for (;;) {
      const {value, done} = await reader.read(); if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut; while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim(); buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const delta = JSON.parse(line.slice(6)).choices[0]?.delta?.content || "";
        answer += delta; out.innerHTML = markdown(answer); $("log").scrollTop = $("log").scrollHeight;
      }
    }
  } catch (e) { if (e.name !== "AbortError") out.innerHTML = "<i>" + esc(e.message) + "</i>"; }
  history.push({role: "assistant", content: answer});
  controller = null; $("send").disabled = false; $("stop").disabled = true;
}
$("send").onclick = send; $("stop").onclick = () => controller && controller.abort();
$("prompt").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); } };
$("clear").onclick = () => { history = []; $("log").innerHTML = ""; };
// ---- classify
$("drop").onclick = () => $("file").click();
$("drop").ondragover = (e) => { e.preventDefault(); $("drop").classList.add("over"); };
$("drop").ondragleave = () => $("drop").classList.remove("over");
$("drop").ondrop = (e) => { e.preventDefault(); $("drop").classList.remove("over"); classify(e.dataTransfer.files[0]); };
$("file").onchange = () => classify($("file").files[0]);
async function classify(file) {
  if (!file) return; const form = new FormData(); form.append("file", file);
  $("prediction").innerHTML = "<p class='muted'>…</p>";
  try {
    const r = await fetch("/v1/predict/" + encodeURIComponent($("predict-model").value), {method: "POST", headers: headers(false), body: form});
    const p = await r.json(); if (!r.ok) throw new Error(p.error.message);
    if (p.label === undefined) { $("prediction").innerHTML = `<h3>${esc(String(p.value))}</h3>`; return; }
    const rows = Object.entries(p.probs).sort((a, b) => b[1] - a[1]).slice(0, 5).map(([c, v]) =>
      `<tr><td>${esc(c)}</td><td style="width:300px"><div class="bar" style="width:${(v * 100).toFixed(1)}%"></div></td><td>${(v * 100).toFixed(1)}%</td></tr>`).join("");
    $("prediction").innerHTML = `<h3 id="label">${esc(p.label)}</h3><p class="muted">${esc(file.name)}</p><table class="probs">${rows}</table>`;
  } catch (e) { $("prediction").innerHTML = "<p>" + esc(e.message) + "</p>"; }
}
// ---- ask documents: NDJSON stream of citations, then text
async function ask() {
  const q = $("question").value.trim(); if (!q) return;
  $("answer").textContent = ""; $("sources").innerHTML = ""; $("passage").style.display = "none";
  $("page").style.display = "none"; $("quote").style.display = "none";
  try {
    const r = await api("/v1/ask/" + encodeURIComponent($("index").value), {question: q});
    const reader = r.body.getReader(), decoder = new TextDecoder(); let buffer = "", text = "", cites = [];
    for (;;) {
      const {value, done} = await reader.read(); if (done) break;
      buffer += decoder.decode(value, {stream: true}); let cut;
      while ((cut = buffer.indexOf("\n")) >= 0) {
        const m = JSON.parse(buffer.slice(0, cut)); buffer = buffer.slice(cut + 1);
        if (m.citations) { cites = m.citations; $("sources").innerHTML = cites.map((c) =>
          `<div><span class="cite" data-n="${c.number}">[${c.number}]</span> ${esc(c.source)}${c.page ? ", page " + c.page : ""}${c.section ? " <span class=\"muted\">" + esc(c.section) + "</span>" : ""} <span class="muted">score ${c.score.toFixed(2)}</span></div>`).join("");
          $("sources").querySelectorAll(".cite").forEach((el) => el.onclick = () => showPassage(cites[el.dataset.n - 1])); }
        if (m.quote) { $("quote").textContent = "\u201c" + m.quote.text + "\u201d [" + m.quote.number + "]"; $("quote").style.display = "block"; }
        if (m.done && m.supported === false && $("quote").style.display === "block") { $("quote").insertAdjacentText("afterbegin", "Not supported by the sources, which say: "); }
        if (m.text) { text += m.text; $("answer").innerHTML = markdown(text); }
      }
    }
  } catch (e) { $("answer").textContent = e.message; }
}
async function showPassage(c) {  // the passage, then its PDF page with the passage highlighted
  $("passage").textContent = c.text; $("passage").style.display = "block"; $("page").style.display = "none";
  if (!c.page || c.id == null) return;
  try {
    const blob = await (await api("/v1/page/" + encodeURIComponent($("index").value) + "/" + c.id)).blob();
    $("page").src = URL.createObjectURL(blob); $("page").style.display = "block";
  } catch (e) { /* not a PDF, or the file changed: the passage text is shown */ }
}
$("ask-go").onclick = ask;
// ---- runs: loss curves on a canvas
async function loadRuns() {
  try { const runs = (await (await api("/v1/runs")).json()).runs; fill($("run"), runs.map((r) => r.name)); if (runs.length) plot(); }
  catch (e) { $("run-info").textContent = e.message; }
}
async function plot() {
  const h = (await (await api("/v1/runs/" + encodeURIComponent($("run").value))).json()).history;
  const c = $("plot").getContext("2d"), W = $("plot").width, H = $("plot").height, pad = 40;
  c.clearRect(0, 0, W, H); if (!h.length) { $("run-info").textContent = "no epochs logged yet"; return; }
  const series = [["train_loss", "#2f6fdb"], ["valid_loss", "#d9822b"]];
  const ys = h.flatMap((r) => series.map(([k]) => r[k]).filter((v) => typeof v === "number"));
  const lo = Math.min(...ys), hi = Math.max(...ys), n = Math.max(h.length - 1, 1);
  const x = (i) => pad + (W - 2 * pad) * i / n, y = (v) => H - pad - (H - 2 * pad) * (v - lo) / ((hi - lo) || 1);
  c.strokeStyle = "#ccc"; c.strokeRect(pad, pad, W - 2 * pad, H - 2 * pad); c.fillStyle = "#666";
  c.fillText(hi.toFixed(3), 2, pad + 4); c.fillText(lo.toFixed(3), 2, H - pad); c.fillText("epoch", W / 2, H - 10);
  series.forEach(([k, color], j) => { c.strokeStyle = color; c.beginPath();
    h.forEach((r, i) => typeof r[k] === "number" && (i ? c.lineTo(x(i), y(r[k])) : c.moveTo(x(i), y(r[k])))); c.stroke();
    c.fillStyle = color; c.fillText(k, W - pad - 80, pad + 14 + 14 * j); });
  $("run-info").textContent = JSON.stringify(h[h.length - 1]);
}
$("run").onchange = plot;
load();
</script></body></html>
"""
