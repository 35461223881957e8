// retreino serve: drop or pick images, one request per image so each card fills in as soon as
// its answer arrives (the server micro-batches concurrent requests into one model call).
"use strict";

const PALETTE = ["#4f46e5", "#0891b2", "#d97706", "#db2777", "#16a34a", "#7c3aed", "#dc2626", "#0d9488", "#ca8a04", "#2563eb"];
const IN_FLIGHT = 4; // parallel uploads from this page
const MAX_BARS = 6; // a 1000-class model shows its best few, not 1000 bars
const MAX_CHIPS = 24;

const $ = (sel) => document.querySelector(sel);
const state = { model: null, colors: {}, queue: [], running: 0, done: [], total: 0, files: new WeakMap() };

function colorOf(name) {
  return state.colors[name] || "var(--accent)";
}

function pct(p) {
  const v = p * 100;
  if (v >= 99.95) return "100%";
  if (v < 0.05) return "0%";
  return (v < 10 || v >= 99 ? v.toFixed(1) : v.toFixed(0)) + "%";
}

async function loadModel() {
  try {
    const res = await fetch("/model");
    const m = await res.json();
    state.model = m;
    m.classes.forEach((c, i) => (state.colors[c] = PALETTE[i % PALETTE.length]));
    document.title = `${m.name} · retreino`;
    $("#model-name").textContent = m.name;
    $("#model-meta").textContent =
      `${m.classes.length} classes · ${m.input_size[0]}×${m.input_size[1]} input · ${m.runtime} runtime · up to ${m.limits.max_file_mb} MB per image`;
    const list = $("#model-classes");
    const chips = m.classes.slice(0, MAX_CHIPS).map((c) => {
      const li = document.createElement("li");
      li.textContent = c;
      li.style.setProperty("--c", colorOf(c));
      return li;
    });
    if (m.classes.length > MAX_CHIPS) {
      const li = document.createElement("li");
      li.className = "more";
      li.textContent = `+ ${m.classes.length - MAX_CHIPS} more`;
      li.title = m.classes.slice(MAX_CHIPS).join(", ");
      chips.push(li);
    }
    list.replaceChildren(...chips);
    $("#why-toggle").hidden = !m.explain;
  } catch (err) {
    $("#model-name").textContent = "Server unreachable";
    $("#model-meta").textContent = String(err);
  }
}

async function refreshHealth() {
  try {
    const h = await (await fetch("/health")).json();
    const b = h.batching;
    $("#health").textContent =
      `ready · ${h.requests} requests · ${b.images} images in ${b.batches} model calls (mean batch ${b.mean_batch_size})`;
  } catch {
    $("#health").textContent = "server unreachable";
  }
}

function addFiles(files) {
  const images = Array.from(files);
  if (!images.length) return;
  $("#toolbar").hidden = false;
  // Newest drop on top, but the files of one drop in the order they were chosen.
  const batch = document.createDocumentFragment();
  for (const file of images) {
    const card = makeCard(file);
    batch.append(card);
    state.total += 1;
    state.queue.push({ file, card });
  }
  $("#results").prepend(batch);
  pump();
  updateSummary();
}

function makeCard(file) {
  const card = $("#card-template").content.firstElementChild.cloneNode(true);
  card.dataset.state = "pending";
  card.querySelector(".file").textContent = file.name || "pasted image";
  card.querySelector(".file").title = file.name || "";
  state.files.set(card, file);
  const img = card.querySelector("img");
  img.alt = file.name || "uploaded image";
  if (file.type.startsWith("image/")) {
    img.src = URL.createObjectURL(file);
    img.onerror = () => img.setAttribute("src", "");
  } else {
    img.setAttribute("src", "");
  }
  return card;
}

function pump() {
  while (state.running < IN_FLIGHT && state.queue.length) {
    const job = state.queue.shift();
    state.running += 1;
    predict(job).finally(() => {
      state.running -= 1;
      pump();
      updateSummary();
      refreshHealth();
    });
  }
}

async function predict({ file, card }) {
  const limit = state.model ? state.model.limits.max_file_mb * 1e6 : Infinity;
  if (file.size > limit) {
    return fail(card, "file_too_large", `${(file.size / 1e6).toFixed(1)} MB is over the ${state.model.limits.max_file_mb} MB limit per image`);
  }
  const form = new FormData();
  form.append("files", file, file.name || "pasted.png");
  let res, body;
  try {
    res = await fetch("/predict", { method: "POST", body: form });
    body = await res.json();
  } catch (err) {
    return fail(card, "network", "no answer from the server: is it still running?");
  }
  if (!res.ok) return fail(card, body.error || `HTTP ${res.status}`, body.detail || res.statusText);
  show(card, body.predictions[0], body.time_ms);
}

function show(card, p, ms) {
  card.classList.remove("pending");
  card.classList.add("done");
  card.dataset.state = "done";
  card.dataset.class = p.class;
  const label = card.querySelector(".label");
  label.textContent = p.class;
  card.style.setProperty("--c", colorOf(p.class));
  card.querySelector(".confidence").textContent = pct(p.confidence);
  card.querySelector(".confidence").title = `${(p.confidence * 100).toFixed(2)}% · ${ms} ms on the server`;
  if (p.unknown) {
    // Unlike anything the model was trained on: say so plainly, and what it would have guessed.
    card.dataset.unknown = "true";
    label.textContent = "unknown";
    label.title = `score ${p.unknown_score.toFixed(3)} below the threshold ${p.unknown_threshold.toFixed(3)}`;
    card.style.setProperty("--c", "#777777");
    card.querySelector(".confidence").textContent = `not like the training images · would say ${p.would_say}`;
  }
  const all = Object.entries(p.probabilities).sort((a, b) => b[1] - a[1]);
  const rows = all.slice(0, MAX_BARS);
  const bars = card.querySelector(".bars");
  bars.replaceChildren(
    ...rows.map(([name, prob]) => {
      const li = document.createElement("li");
      li.className = "bar" + (name === p.class ? " best" : "");
      li.style.setProperty("--c", colorOf(name));
      const n = document.createElement("span");
      n.className = "name";
      n.textContent = name;
      n.title = name;
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      track.append(fill);
      const v = document.createElement("span");
      v.className = "pct";
      v.textContent = pct(prob);
      li.append(n, track, v);
      // Set the width on the next frame so the bar grows into place.
      requestAnimationFrame(() => (fill.style.width = `${Math.max(prob * 100, 0.5)}%`));
      return li;
    })
  );
  if (all.length > rows.length) {
    const more = document.createElement("li");
    more.className = "more";
    more.textContent = `+ ${all.length - rows.length} more classes, together ${pct(all.slice(MAX_BARS).reduce((s, [, v]) => s + v, 0))}`;
    bars.append(more);
  }
  state.done.push(p.class);
  if ($("#why").checked) explainCard(card);
}

// "show why": fetch each answered card's Grad-CAM overlay once, then the toggle only swaps pictures.
async function explainCard(card) {
  if (card.dataset.why || card.dataset.state !== "done") return;
  const file = state.files.get(card);
  if (!file) return;
  card.dataset.why = "loading";
  const form = new FormData();
  form.append("files", file, file.name || "pasted.png");
  try {
    const res = await fetch("/explain", { method: "POST", body: form });
    const body = await res.json();
    if (!res.ok) throw new Error(body.detail || res.statusText);
    const e = body.explanations[0];
    const img = document.createElement("img");
    img.className = "why";
    img.alt = `where the model looked for ${e.class}`;
    img.title = `Grad-CAM of ${e.class} (${pct(e.probability)}) on layer ${e.layer}`;
    img.src = e.overlay;
    card.querySelector(".thumb").append(img);
    card.dataset.why = "ready";
  } catch (err) {
    card.dataset.why = "failed";
    card.querySelector(".error").textContent = `no explanation: ${err.message}`;
  }
}

function toggleWhy() {
  const on = $("#why").checked;
  document.body.classList.toggle("show-why", on);
  if (on) for (const card of document.querySelectorAll("#results .card")) explainCard(card);
}

function fail(card, code, message) {
  card.classList.remove("pending");
  card.classList.add("failed");
  card.dataset.state = "failed";
  card.dataset.error = code;
  card.querySelector(".label").textContent = code.replaceAll("_", " ");
  card.querySelector(".error").textContent = message;
  state.done.push(null);
}

function updateSummary() {
  const counts = {};
  let failed = 0;
  for (const c of state.done) c === null ? (failed += 1) : (counts[c] = (counts[c] || 0) + 1);
  const parts = [`${state.total} image${state.total === 1 ? "" : "s"}`];
  for (const [c, n] of Object.entries(counts).sort((a, b) => b[1] - a[1])) parts.push(`${n} ${c}`);
  if (failed) parts.push(`${failed} refused`);
  const waiting = state.total - state.done.length;
  if (waiting) parts.push(`${waiting} waiting`);
  $("#summary").textContent = parts.join(" · ");
}

function clearAll() {
  for (const img of document.querySelectorAll("#results img")) if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  $("#results").replaceChildren();
  state.done = [];
  state.total = state.queue.length + state.running;
  $("#toolbar").hidden = state.total === 0;
  updateSummary();
}

function wire() {
  const drop = $("#drop");
  const input = $("#file-input");
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = "";
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      input.click();
    }
  });
  // Dropping anywhere on the page works; the zone lights up while dragging.
  let depth = 0;
  window.addEventListener("dragenter", (e) => {
    e.preventDefault();
    depth += 1;
    drop.classList.add("over");
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) drop.classList.remove("over");
  });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    drop.classList.remove("over");
    addFiles(e.dataTransfer.files);
  });
  window.addEventListener("paste", (e) => {
    const files = Array.from(e.clipboardData.items)
      .filter((i) => i.kind === "file")
      .map((i) => i.getAsFile());
    addFiles(files);
  });
  $("#clear").addEventListener("click", clearAll);
  $("#why").addEventListener("change", toggleWhy);
  $("#origin").textContent = window.location.origin;
}

wire();
loadModel();
refreshHealth();
