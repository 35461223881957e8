// retreino studio: the page. Plain DOM, no framework, nothing fetched from anywhere but this server.
// Every action is one call of the studio's API (see studio/app.py); training, evaluation and export
// are jobs on the server, followed through one EventSource (/api/events).
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v); // never "style": the page's CSP refuses style attributes
  }
  for (const c of children) node.append(c);
  return node;
};
const enc = encodeURIComponent;

const state = {
  project: null,
  classes: [],
  current: null, // selected class
  run: null, // selected run name
  runs: [],
  job: null,
  lastJobKey: "",
  problems: new Map(), // "class/name" -> what check-data says about that image
  models: [], // starting models dropped on the page (.retreino/models/)
  evaluation: null, // the selected run's last evaluation
  suspects: new Map(), // "class/name" -> the label check's suspect for that image
};

// ---- API ------------------------------------------------------------------------------------
async function api(path, options = {}) {
  const opts = { ...options };
  if (opts.json !== undefined) {
    opts.body = JSON.stringify(opts.json);
    opts.headers = { "Content-Type": "application/json" };
    delete opts.json;
  }
  const res = await fetch(path, opts);
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json() : await res.text();
  if (!res.ok && !(data && data.added)) throw new Error((data && data.detail) || `${res.status} ${res.statusText}`);
  return data;
}

function say(text, ok = false) {
  const m = $("#message");
  m.textContent = text;
  m.classList.toggle("ok", ok);
  m.hidden = !text;
  clearTimeout(say.timer);
  if (text) say.timer = setTimeout(() => { m.hidden = true; }, ok ? 3000 : 9000);
}
const guard = (fn) => async (...args) => { try { return await fn(...args); } catch (e) { say(e.message); } };

// ---- tabs -----------------------------------------------------------------------------------
function showTab(name) {
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".panel-tab")) p.hidden = p.id !== `panel-${name}`;
  if (name === "data") grid.layout();
  if (name === "evaluate") loadEvaluation();
  if (name === "export") loadExports();
}

// ---- classes ----------------------------------------------------------------------------------
async function loadClasses() {
  state.classes = await api("/api/classes");
  if (!state.classes.some((c) => c.name === state.current)) state.current = state.classes.length ? state.classes[0].name : null;
  renderClasses();
}

function renderClasses() {
  const list = $("#class-list");
  list.replaceChildren(...state.classes.map((c) => el("li", {
    "data-class": c.name, class: c.name === state.current ? "selected" : "",
    onclick: () => selectClass(c.name),
  }, el("span", { class: "name", text: c.name }), el("span", { class: "count", text: String(c.count) }))));
  for (const id of ["#merge-from", "#merge-into"]) {
    $(id).replaceChildren(...state.classes.map((c) => el("option", { value: c.name, text: c.name })));
  }
  if (state.classes.length > 1) $("#merge-into").selectedIndex = 1;
  const cls = state.classes.find((c) => c.name === state.current);
  $("#class-title").textContent = cls ? cls.name : "No class yet: add one";
  $("#class-count").textContent = cls ? `${cls.count.toLocaleString()} images` : "";
  for (const id of ["#rename-btn", "#delete-class-btn", "#cam-start"]) $(id).disabled = !cls;
}

async function selectClass(name) {
  state.current = name;
  renderClasses();
  await grid.open(name);
}

function setCount(cls, count) {
  const c = state.classes.find((x) => x.name === cls);
  if (c) c.count = count;
  renderClasses();
}

// ---- the virtual grid: only the rows in view exist in the DOM ------------------------------------
const PAGE = 500;
const grid = {
  cls: null, total: 0, names: [], pages: new Map(), cells: new Map(), cols: 1, cell: 136, frame: 0,

  async open(cls) {
    this.cls = cls;
    this.names = [];
    this.pages = new Map();
    for (const c of this.cells.values()) c.remove();
    this.cells.clear();
    $("#grid").scrollTop = 0;
    if (!cls) { this.total = 0; this.layout(); return; }
    await this.fetchPage(0);
    this.layout();
  },

  async reload() { // after uploads or deletes: names shift, so pages are refetched
    const top = $("#grid").scrollTop;
    const cls = this.cls;
    await this.open(cls);
    $("#grid").scrollTop = top;
    this.render();
  },

  fetchPage(n) {
    if (this.pages.has(n)) return this.pages.get(n);
    const cls = this.cls;
    const p = api(`/api/classes/${enc(cls)}/images?offset=${n * PAGE}&limit=${PAGE}`).then((page) => {
      if (cls !== this.cls) return;
      this.total = page.total;
      page.names.forEach((name, i) => { this.names[page.offset + i] = name; });
      this.render();
    });
    this.pages.set(n, p);
    return p;
  },

  layout() {
    const box = $("#grid");
    this.cols = Math.max(1, Math.floor((box.clientWidth - 8) / this.cell));
    const rows = Math.ceil(this.total / this.cols);
    $("#grid-spacer").style.height = `${rows * this.cell + 8}px`;
    $("#grid-empty").hidden = this.total > 0;
    this.render();
  },

  schedule() { // one render per animation frame, however many scroll events arrive
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
  },

  render() {
    const box = $("#grid");
    const first = Math.max(0, Math.floor(box.scrollTop / this.cell) - 2);
    const last = Math.ceil((box.scrollTop + box.clientHeight) / this.cell) + 2;
    const start = first * this.cols;
    const end = Math.min(this.total, last * this.cols);
    for (const [i, c] of this.cells) {
      if (i < start || i >= end || c.dataset.name !== (this.names[i] || "")) { c.remove(); this.cells.delete(i); }
    }
    for (let i = start; i < end; i++) {
      const name = this.names[i];
      if (name === undefined) { this.fetchPage(Math.floor(i / PAGE)); continue; }
      if (this.cells.has(i)) continue;
      const cell = this.makeCell(name);
      cell.style.transform = `translate(${4 + (i % this.cols) * this.cell}px, ${4 + Math.floor(i / this.cols) * this.cell}px)`;
      this.cells.set(i, cell);
      box.append(cell);
    }
  },

  makeCell(name) {
    const cls = this.cls;
    const img = el("img", { alt: name, loading: "lazy", decoding: "async", draggable: "false",
      src: `/api/classes/${enc(cls)}/images/${enc(name)}/thumb` });
    const problem = state.problems.get(`${cls}/${name}`);
    const cell = el("div", { class: problem ? "cell flagged" : "cell", title: problem ? `${name}: ${problem}` : name,
      "data-name": name, "data-problem": problem || "" }, img,
      el("button", { class: "del", type: "button", title: "delete this image", text: "×",
        onclick: guard(async (e) => {
          e.stopPropagation();
          const r = await api(`/api/classes/${enc(cls)}/images/${enc(name)}`, { method: "DELETE" });
          setCount(cls, r.count);
          await this.reload();
        }) }));
    img.addEventListener("error", async () => { // the server says why: corrupt, too many pixels...
      cell.classList.add("broken");
      try {
        const r = await fetch(img.src);
        const body = await r.json();
        cell.dataset.problem = body.detail || "cannot be read";
      } catch (e) { cell.dataset.problem = "cannot be read"; }
    }, { once: true });
    return cell;
  },
};

// ---- check-data: problems shown on the images they concern -----------------------------------------
function showCheck(report) {
  state.problems = new Map();
  for (const p of report.problems || []) for (const key of p.images) if (!state.problems.has(key)) state.problems.set(key, p.kind);
  $("#check-verdict").textContent = report.verdict || "";
  $("#problems").replaceChildren(...(report.problems || []).slice(0, 50).map((p) => el("li", { "data-kind": p.kind, text: `${p.kind}: ${p.message}` })));
}

async function checkData() {
  $("#check-verdict").textContent = "checking every image…";
  showCheck(await api("/api/check", { method: "POST" }));
  await grid.reload();
}

// ---- adding images: picker, drop, paste, webcam --------------------------------------------------
async function upload(cls, files) {
  const max = (state.project && state.project.limits.max_files) || 16;
  let added = 0;
  const refused = [];
  for (let i = 0; i < files.length; i += max) {
    const form = new FormData();
    for (const f of files.slice(i, i + max)) form.append("files", f, f.name || "pasted.png");
    const r = await api(`/api/classes/${enc(cls)}/images`, { method: "POST", body: form });
    added += r.added.length;
    refused.push(...r.refused);
    setCount(cls, r.count);
    $("#upload-status").textContent = `added ${added} of ${files.length} to ${cls}`;
  }
  if (refused.length) say(`refused ${refused.length}: ${refused.map((r) => r.detail).join("; ")}`);
  if (cls === grid.cls) await grid.reload();
  return added;
}

function wireDrops() {
  const box = $("#grid");
  box.addEventListener("scroll", () => grid.schedule(), { passive: true });
  window.addEventListener("resize", () => grid.layout());
  box.addEventListener("dragover", (e) => { e.preventDefault(); box.classList.add("dragging"); });
  box.addEventListener("dragleave", () => box.classList.remove("dragging"));
  box.addEventListener("drop", guard(async (e) => {
    e.preventDefault();
    box.classList.remove("dragging");
    if (!state.current) throw new Error("add a class first");
    await upload(state.current, [...e.dataTransfer.files].filter((f) => f.type.startsWith("image/") || !f.type));
  }));
  $("#file-input").addEventListener("change", guard(async (e) => {
    const files = [...e.target.files];
    e.target.value = "";
    await upload(state.current, files);
  }));
  document.addEventListener("paste", guard(async (e) => {
    const files = [...(e.clipboardData ? e.clipboardData.files : [])];
    if (!files.length) return;
    if (!$("#panel-try").hidden) return tryFiles(files);
    if (!state.current) throw new Error("add a class first");
    await upload(state.current, files);
  }));
}

const camera = {
  stream: null, timer: 0, frames: [], total: 0, sending: Promise.resolve(),

  async open(video) {
    if (!this.stream) this.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    video.srcObject = this.stream;
    await video.play();
  },

  close() {
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    this.stream = null;
  },

  frame(video) { // a centred square, 256 px: what Teachable Machine keeps of a webcam frame
    const side = Math.min(video.videoWidth, video.videoHeight);
    const canvas = el("canvas", { width: 256, height: 256 });
    canvas.getContext("2d").drawImage(video, (video.videoWidth - side) / 2, (video.videoHeight - side) / 2, side, side, 0, 0, 256, 256);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
  },

  hold(video) {
    if (this.timer) return;
    $("#cam-hold").classList.add("on");
    const grab = async () => {
      const blob = await this.frame(video);
      if (!blob) return;
      this.frames.push(new File([blob], `webcam-${Date.now()}-${this.total++}.jpg`, { type: "image/jpeg" }));
      $("#cam-count").textContent = `${this.total} frames`;
      if (this.frames.length >= 8) this.flush();
    };
    grab();
    this.timer = setInterval(grab, 100);
  },

  release() {
    if (!this.timer) return;
    clearInterval(this.timer);
    this.timer = 0;
    $("#cam-hold").classList.remove("on");
    setTimeout(() => this.flush(), 150); // the last toBlob may still be encoding
  },

  flush() { // uploads run one after another, in the order the frames were taken
    const batch = this.frames.splice(0);
    if (!batch.length) return this.sending;
    const cls = state.current;
    this.sending = this.sending.then(() => upload(cls, batch)).catch((e) => say(e.message));
    return this.sending;
  },
};

function wireCamera() {
  const video = $("#cam-video");
  $("#cam-start").addEventListener("click", guard(async () => {
    $("#cam").hidden = false;
    await camera.open(video);
  }));
  $("#cam-stop").addEventListener("click", () => { camera.release(); camera.close(); $("#cam").hidden = true; });
  const hold = $("#cam-hold");
  hold.addEventListener("pointerdown", (e) => { e.preventDefault(); hold.setPointerCapture && hold.setPointerCapture(e.pointerId); camera.hold(video); });
  for (const ev of ["pointerup", "pointercancel", "lostpointercapture"]) hold.addEventListener(ev, () => camera.release());
  hold.addEventListener("keydown", (e) => { if (e.key === " " && !e.repeat) camera.hold(video); });
  hold.addEventListener("keyup", (e) => { if (e.key === " ") camera.release(); });
}

function wireClassForms() {
  $("#new-class").addEventListener("submit", guard(async (e) => {
    e.preventDefault();
    const name = $("#new-class-name").value.trim();
    const r = await api("/api/classes", { method: "POST", json: { name } });
    $("#new-class-name").value = "";
    await loadClasses();
    await selectClass(r.name);
  }));
  $("#rename-btn").addEventListener("click", guard(async () => {
    const name = prompt(`Rename class ${state.current} to:`, state.current);
    if (!name || name === state.current) return;
    const r = await api(`/api/classes/${enc(state.current)}`, { method: "PATCH", json: { name } });
    state.current = r.name;
    await loadClasses();
    await grid.open(r.name);
  }));
  $("#delete-class-btn").addEventListener("click", guard(async () => {
    if (!confirm(`Delete class ${state.current}? Its images are moved to .retreino/trash/.`)) return;
    await api(`/api/classes/${enc(state.current)}`, { method: "DELETE" });
    state.current = null;
    await loadClasses();
    await grid.open(state.current);
  }));
  $("#check-btn").addEventListener("click", guard(checkData));
  $("#merge").addEventListener("submit", guard(async (e) => {
    e.preventDefault();
    const from = $("#merge-from").value;
    const into = $("#merge-into").value;
    const r = await api("/api/classes/merge", { method: "POST", json: { sources: [from], into } });
    say(`moved ${r.moved} images from ${from} into ${into}`, true);
    state.current = into;
    await loadClasses();
    await grid.open(into);
  }));
}

// ---- training: the form, the job, the live curves ------------------------------------------------
function fmt(v, digits = 3) { return v === null || v === undefined || v === "" ? "–" : Number(v).toFixed(digits); }

function drawCurve(canvas, history, keys, total, fixedMax) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 44, R = 10, T = 22, B = 26;
  ctx.clearRect(0, 0, W, H);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#626b7f";
  ctx.strokeStyle = "#e3e6ee";
  const values = history.flatMap((r) => keys.map((k) => Number(r[k]))).filter(Number.isFinite);
  const max = fixedMax || Math.max(1e-3, ...values) * 1.1;
  const n = Math.max(total || 0, history.length, 2);
  const x = (e) => L + ((e - 1) / (n - 1)) * (W - L - R);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    ctx.beginPath(); ctx.moveTo(L, y(v)); ctx.lineTo(W - R, y(v)); ctx.stroke();
    ctx.fillText(v.toFixed(max < 2 ? 2 : 1), 4, y(v) + 4);
  }
  for (let e = 1; e <= n; e += Math.max(1, Math.ceil(n / 10))) ctx.fillText(String(e), x(e) - 3, H - 8);
  const colors = ["#4f46e5", "#ea580c"];
  keys.forEach((k, i) => {
    ctx.strokeStyle = colors[i];
    ctx.fillStyle = colors[i];
    ctx.lineWidth = 2;
    ctx.setLineDash(i ? [5, 3] : []);
    ctx.beginPath();
    history.forEach((r, j) => { const v = Number(r[k]); if (Number.isFinite(v)) { j ? ctx.lineTo(x(r.epoch), y(v)) : ctx.moveTo(x(r.epoch), y(v)); } });
    ctx.stroke();
    for (const r of history) { const v = Number(r[k]); if (Number.isFinite(v)) { ctx.beginPath(); ctx.arc(x(r.epoch), y(v), 3, 0, 7); ctx.fill(); } }
    ctx.setLineDash([]);
    ctx.fillText(k, L + 6 + i * 110, 14);
  });
  ctx.lineWidth = 1;
  canvas.dataset.points = String(history.length);
}

function renderRun(run) {
  if (!run) return;
  $("#run-title").textContent = `${run.name} · ${run.status} · epoch ${run.epoch}/${run.total_epochs || "?"}`;
  $("#run-title").dataset.run = run.name;
  $("#run-best").textContent = run.best_epoch ? `best: epoch ${run.best_epoch}, val acc ${fmt(run.best)}` : "";
  drawCurve($("#curve-acc"), run.history, ["accuracy", "val_accuracy"], run.total_epochs, 1.0);
  drawCurve($("#curve-loss"), run.history, ["loss", "val_loss"], run.total_epochs);
  $("#epochs tbody").replaceChildren(...run.history.map((r) => el("tr", { class: r.epoch === run.best_epoch ? "best" : "" },
    ...[r.epoch, r.phase, fmt(r.loss, 4), fmt(r.accuracy), fmt(r.val_loss, 4), fmt(r.val_accuracy), fmt(r.seconds, 1)]
      .map((v) => el("td", { text: String(v) })))));
}

function selectRun(name) {
  state.run = name;
  for (const s of document.querySelectorAll(".run-name")) s.textContent = name ? `· ${name}` : "";
  renderRuns();
  const run = state.runs.find((r) => r.name === name);
  if (run) renderRun(run);
}

async function loadRuns() {
  const r = await api("/api/runs");
  state.runs = r.runs;
  if (!state.run && state.runs.length) state.run = state.runs[0].name;
  selectRun(state.run);
}

function renderRuns() {
  $("#runs").replaceChildren(...state.runs.map((r) => {
    const li = el("li", { "data-run": r.name, "data-status": r.status, class: r.name === state.run ? "selected" : "",
      onclick: () => selectRun(r.name) },
    el("span", { class: "name", text: r.name }),
    el("span", { class: `badge ${r.status}`, text: r.status }),
    el("span", { class: "meta", text: `epoch ${r.epoch}/${r.total_epochs || "?"} · best val acc ${fmt(r.best)} · ${r.model || ""}` }));
    if (r.status === "interrupted") {
      li.append(el("button", { class: "resume", type: "button", text: "Resume",
        onclick: guard(async (e) => {
          e.stopPropagation();
          const j = await api(`/api/runs/${enc(r.name)}/resume`, { method: "POST" });
          state.run = r.name;
          onJob(j.job);
        }) }));
    }
    return li;
  }));
}

function onJob(job) {
  state.job = job;
  const status = job ? job.status : "idle";
  const s = $("#job-status");
  s.dataset.status = status;
  s.dataset.kind = job ? job.kind : "";
  // check-data's answer (label-issues): done, with what it found, even when its exit status says "problems"
  const found = job && job.verdict !== undefined ? ` · ${job.problems} problem${job.problems === 1 ? "" : "s"} found` : "";
  s.dataset.problems = found ? String(job.problems) : "";
  s.textContent = job ? `${job.kind} ${job.run}: ${status}${found}` : "idle";
  s.title = job && job.verdict ? job.verdict : "";
  const running = job && (job.status === "running" || job.status === "stopping");
  $("#stop-btn").disabled = !running;
  for (const id of ["#train-btn", "#eval-btn", "#export-btn", "#issues-btn"]) $(id).disabled = !!running;
}

function wireTraining() {
  $("#train-form").addEventListener("submit", guard(async (e) => {
    e.preventDefault();
    const num = (id) => ($(id).value === "" ? null : Number($(id).value));
    const r = await api("/api/train", { method: "POST", json: {
      model: $("#train-model").value.trim(), epochs: num("#train-epochs"), learning_rate: num("#train-lr"),
      unfreeze: num("#train-unfreeze"), batch_size: num("#train-batch"), name: $("#train-name").value.trim() || null,
    } });
    state.run = r.job.run;
    $("#run-title").textContent = `${r.job.run} · starting (loading TensorFlow)…`;
    $("#epochs tbody").replaceChildren();
    drawCurve($("#curve-acc"), [], ["accuracy", "val_accuracy"], 0, 1.0);
    drawCurve($("#curve-loss"), [], ["loss", "val_loss"], 0);
    onJob(r.job);
  }));
  $("#stop-btn").addEventListener("click", guard(async () => onJob((await api("/api/jobs/stop", { method: "POST" })).job)));
}

// ---- starting models dropped on the page -------------------------------------------------------------
function setModels(models) {
  state.models = models;
  const d = state.project.defaults;
  const names = [...models.map((m) => m.path), d.model, ...state.project.backbones].filter(Boolean);
  $("#models").replaceChildren(...[...new Set(names)].map((m) => el("option", { value: m })));
  renderModelList();
}

// Each dropped model: a click makes it the starting model, × removes its folder (the built-in ones are not listed).
function renderModelList() {
  $("#model-list").replaceChildren(...state.models.map((m) => el("li", {
    "data-model": m.name, class: $("#train-model").value === m.path ? "selected" : "", title: m.path },
  el("button", { type: "button", class: "ghost use", text: m.name, onclick: () => { $("#train-model").value = m.path; renderModelList(); } }),
  el("button", { type: "button", class: "ghost del", title: `remove ${m.name} from this project`, text: "×",
    onclick: guard(async () => {
      if (!confirm(`Remove the starting model ${m.name}? Its folder .retreino/models/${m.name}/ is deleted.`)) return;
      const r = await api(`/api/models/${enc(m.name)}`, { method: "DELETE" });
      if ($("#train-model").value === m.path) $("#train-model").value = state.project.defaults.model || "";
      setModels(r.models);
      say(`removed ${m.name}`, true);
    }) }))));
}

// The server keeps the files only once `retreino inspect` opened them; a refusal is its one line.
async function uploadModel(files) {
  if (!files.length) return;
  const status = $("#model-status");
  status.dataset.state = "checking";
  status.textContent = `checking ${files.map((f) => f.name).join(", ")}…`;
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  try {
    const m = (await api("/api/models", { method: "POST", body: form })).model;
    $("#train-model").value = m.path;
    setModels((await api("/api/models")).models);
    status.dataset.state = "ready";
    status.textContent = `${m.name} (${m.format_name || m.format}; ${(m.classes || []).length} classes: ${(m.classes || []).join(", ")}) is the starting model`;
    say(`${m.name} opened and kept`, true);
  } catch (e) {
    status.dataset.state = "error";
    status.textContent = e.message;
    say(e.message);
  }
}

function wireModels() {
  $("#train-model").addEventListener("input", renderModelList);
  $("#model-input").addEventListener("change", (e) => { const f = [...e.target.files]; e.target.value = ""; uploadModel(f); });
  const zone = $("#train-form");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("dragging"); uploadModel([...e.dataTransfer.files]); });
}

function listen() {
  const source = new EventSource("/api/events");
  source.addEventListener("update", (e) => {
    const snap = JSON.parse(e.data);
    onJob(snap.job);
    $("#log").textContent = (snap.log || []).join("\n");
    $("#log").hidden = !(snap.log || []).length;
    if (snap.run) {
      const i = state.runs.findIndex((r) => r.name === snap.run.name);
      if (i >= 0) state.runs[i] = snap.run; else state.runs.unshift(snap.run);
      if (state.run === snap.run.name) renderRun(snap.run);
      renderRuns();
    }
    const key = snap.job ? `${snap.job.id}:${snap.job.status}` : "";
    if (key !== state.lastJobKey) { // a job changed state: refresh what it produces
      state.lastJobKey = key;
      if (snap.job && snap.job.status !== "running") {
        loadRuns().catch(() => {});
        if ((snap.job.kind === "evaluate" || snap.job.kind === "label-issues") && !$("#panel-evaluate").hidden) loadEvaluation();
        if (snap.job.kind === "export" && !$("#panel-export").hidden) loadExports();
        if (snap.job.status === "failed") say(`${snap.job.kind} failed: ${(snap.log || []).slice(-1)[0] || "see the log"}`);
      }
    }
  });
}

// ---- evaluation ------------------------------------------------------------------------------------
async function loadEvaluation() {
  const box = $("#metrics");
  if (!state.run) { box.textContent = "Train a model first."; return; }
  await loadLabelIssues();
  let ev;
  try { ev = await api(`/api/runs/${enc(state.run)}/evaluation`); } catch (e) {
    state.evaluation = null;
    box.textContent = "Not evaluated yet: press Evaluate.";
    $("#eval-plots").replaceChildren();
    $("#misclassified").replaceChildren();
    $("#misclassified-count").textContent = "";
    return;
  }
  state.evaluation = ev;
  const m = ev.metrics;
  const per = m.per_class || {};
  box.replaceChildren(
    el("div", {}, el("div", { class: "big", id: "metric-accuracy", text: fmt(m.accuracy) }), el("div", { class: "meta", text: "accuracy" })),
    el("div", {}, el("div", { class: "big", text: fmt(m.loss, 4) }), el("div", { class: "meta", text: "loss" })),
    el("div", {}, el("div", { class: "big", text: String(m.n ?? "–") }), el("div", { class: "meta", text: "test images" })),
    el("table", {}, el("thead", {}, el("tr", {}, ...["class", "precision", "recall", "F1", "images"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...Object.entries(per).map(([c, v]) => el("tr", {}, el("td", { text: c }),
        ...[fmt(v.precision), fmt(v.recall), fmt(v.f1 ?? v["f1-score"]), String(v.support ?? "")].map((t) => el("td", { text: t })))))),
  );
  const stamp = Date.now();
  $("#eval-plots").replaceChildren(...ev.files.filter((f) => f !== "learning_curves.png" && f !== "misclassified.png")
    .map((f) => el("img", { src: `/api/runs/${enc(ev.run)}/files/${f}?t=${stamp}`, alt: f, "data-file": f })));
  $("#misclassified-count").textContent = `${ev.misclassified_total} of ${m.n}`;
  renderGallery();
}

const thumbUrl = (cls, name) => `/api/classes/${enc(cls)}/images/${enc(name)}/thumb`;

// A figure of a project image, for `run`'s Grad-CAM; a suspect label (from the label check) gets a badge.
function figure(item, caption, run) {
  const fig = el("figure", { "data-class": item.class, "data-name": item.name, "data-run": run },
    el("img", { class: "thumb", src: thumbUrl(item.class, item.name), alt: item.name, loading: "lazy" }),
    el("figcaption", { text: caption }));
  markSuspect(fig);
  return fig;
}

// The badge follows state.suspects: set when a figure is made, and again on the gallery already shown when the label
// check's answer arrives, so the list and the badges never disagree on the page.
function markSuspect(fig) {
  const suspect = state.suspects.get(`${fig.dataset.class}/${fig.dataset.name}`);
  fig.classList.toggle("suspect", Boolean(suspect));
  fig.querySelector(".suspect-badge")?.remove();
  if (suspect) fig.append(el("span", { class: "suspect-badge", title: `labelled ${suspect.given}, looks like ${suspect.likely}`, text: `label? ${suspect.likely}` }));
}

function renderGallery() {
  const ev = state.evaluation;
  if (!ev) return;
  const all = $("#gallery-show").value === "all";
  const items = all ? [...ev.misclassified, ...ev.correct] : ev.misclassified;
  const box = $("#misclassified");
  box.replaceChildren(...items.map((w) => {
    const fig = figure(w, w.true === w.predicted ? `${w.true} (${(w.confidence * 100).toFixed(0)}%)`
      : `${w.true} → ${w.predicted} (${(w.confidence * 100).toFixed(0)}%)`, ev.run);
    fig.classList.add(w.true === w.predicted ? "right" : "wrong");
    return fig;
  }));
  if (!items.length) box.append(el("p", { class: "meta", text: all ? "no test images" : "none: every test image is right" }));
  if ($("#why").checked) for (const fig of box.querySelectorAll("figure")) explainFigure(fig);
}

// "show why": each figure fetches its Grad-CAM overlay once (made and cached by the server); the toggle then only swaps pictures.
// The same for the test images and the label check's suspects: for a suspect, where the model sees the class it "looks like".
function explainFigure(fig) {
  if (fig.dataset.why || !fig.dataset.run) return;
  fig.dataset.why = "loading";
  const img = el("img", { class: "why", alt: `Grad-CAM of ${fig.dataset.name}` });
  img.addEventListener("load", () => { fig.dataset.why = "ready"; });
  img.addEventListener("error", () => { fig.dataset.why = "failed"; img.remove(); });
  img.src = `/api/runs/${enc(fig.dataset.run)}/gradcam/${enc(fig.dataset.class)}/${enc(fig.dataset.name)}`;
  fig.insertBefore(img, fig.querySelector("figcaption"));
}

function toggleWhy() {
  const on = $("#why").checked;
  document.body.classList.toggle("show-why", on);
  if (on) for (const fig of document.querySelectorAll("#misclassified figure, #label-issues figure")) explainFigure(fig);
}

// The label check's suspects, and their badges on the gallery already shown (before the list says done).
function setSuspects(issues) {
  state.suspects = new Map(issues.map((i) => [`${i.class}/${i.name}`, i]));
  for (const fig of document.querySelectorAll("#misclassified figure")) markSuspect(fig);
}

async function loadLabelIssues() {
  const box = $("#label-issues");
  let r;
  try { r = await api(`/api/runs/${enc(state.run)}/label-issues`); } catch (e) {
    setSuspects([]);
    if (box.dataset.state !== "running" || !(state.job && state.job.kind === "label-issues" && state.job.status === "running")) {
      box.dataset.state = "none";
      box.replaceChildren(el("p", { class: "meta", text: "Not checked yet." }));
    }
    $("#label-issues-count").textContent = "";
    return;
  }
  setSuspects(r.issues);
  box.dataset.state = "done";
  $("#label-issues-count").textContent = `${r.total} found`;
  box.replaceChildren(...r.issues.map((i) => figure(i, `labelled ${i.given}, looks like ${i.likely} (${(i.confidence * 100).toFixed(0)}%)`, r.run)));
  if (!r.total) box.append(el("p", { class: "meta", text: "none found: the model's features dispute no label" }));
  if ($("#why").checked) for (const fig of box.querySelectorAll("figure")) explainFigure(fig);
}

function wireEvaluation() {
  $("#gallery-show").addEventListener("change", renderGallery);
  $("#why").addEventListener("change", toggleWhy);
  $("#issues-btn").addEventListener("click", guard(async () => {
    if (!state.run) throw new Error("train a model first");
    onJob((await api(`/api/runs/${enc(state.run)}/label-issues`, { method: "POST" })).job);
    const box = $("#label-issues");
    box.dataset.state = "running";
    box.replaceChildren(el("p", { class: "meta", text: "Looking for wrong labels (a job: see Train for its log)…" }));
  }));
}

// ---- try ---------------------------------------------------------------------------------------------
async function tryFiles(files) {
  if (!state.run) throw new Error("train a model first");
  const form = new FormData();
  for (const f of files.slice(0, 16)) form.append("files", f, f.name || "image.jpg");
  const r = await api(`/api/runs/${enc(state.run)}/try`, { method: "POST", body: form });
  $("#try-runtime").textContent = `model of ${r.run}, runtime ${r.runtime}`;
  const box = $("#try-results");
  r.predictions.forEach((p, i) => {
    const card = el("div", { class: `try-card${p.unknown ? " unknown" : ""}`, "data-class": p.class || "", "data-file": p.filename },
      el("img", { src: URL.createObjectURL(files[i]), alt: p.filename }),
      el("div", { class: "label", text: p.error ? p.detail : p.class }),
      el("div", { class: "meta", text: p.error ? "" : `${(p.confidence * 100).toFixed(1)}%${p.unknown ? ` (would say ${p.would_say})` : ""}` }));
    for (const [c, v] of Object.entries(p.probabilities || {})) {
      const fill = el("span", { class: "fill" });
      fill.style.width = `${(v * 100).toFixed(1)}%`; // a style property, not a style attribute: the CSP allows only the first
      card.append(el("div", { class: "bar" }, el("span", { text: c }), el("span", { class: "track" }, fill),
        el("span", { text: `${(v * 100).toFixed(1)}%` })));
    }
    box.prepend(card);
  });
}

function wireTry() {
  $("#try-input").addEventListener("change", guard(async (e) => { const f = [...e.target.files]; e.target.value = ""; await tryFiles(f); }));
  const panel = $("#panel-try");
  panel.addEventListener("dragover", (e) => e.preventDefault());
  panel.addEventListener("drop", guard(async (e) => { e.preventDefault(); await tryFiles([...e.dataTransfer.files]); }));
  $("#try-cam").addEventListener("click", guard(async () => {
    const video = $("#try-video");
    video.hidden = false;
    await camera.open(video);
    const blob = await camera.frame(video);
    await tryFiles([new File([blob], `webcam-${Date.now()}.jpg`, { type: "image/jpeg" })]);
  }));
  $("#eval-btn").addEventListener("click", guard(async () => {
    if (!state.run) throw new Error("train a model first");
    onJob((await api(`/api/runs/${enc(state.run)}/evaluate`, { method: "POST" })).job);
    $("#metrics").textContent = "Evaluating…";
  }));
}

// ---- export -------------------------------------------------------------------------------------------
const SAMPLES = {
  tflite: (n) => `from ai_edge_litert.interpreter import Interpreter  # or tf.lite.Interpreter\ninterpreter = Interpreter("${n}/model.tflite"); interpreter.allocate_tensors()\n# or simply: retreino predict ${n} photo.jpg`,
  "tflite-int8": (n) => `retreino predict ${n} photo.jpg   # int8 model: ${n}/model.tflite`,
  onnx: (n) => `import onnxruntime as ort\nsession = ort.InferenceSession("${n}/model.onnx")\n# or: retreino predict ${n} photo.jpg`,
  keras: (n) => `import retreino\nmodel = retreino.load_model("${n}")\nprint(retreino.predict(model, "photo.jpg"))`,
  h5: (n) => `import retreino\nmodel = retreino.load_model("${n}")   # Keras 3 H5`,
  tm: (n) => `# Teachable Machine's Keras download: keras_model.h5 + labels.txt\nretreino predict ${n} photo.jpg`,
  savedmodel: (n) => `import tensorflow as tf\nmodel = tf.saved_model.load("${n}")`,
  tfjs: (n) => `// Teachable Machine's TensorFlow.js format\nconst model = await tmImage.load("${n}/model.json", "${n}/metadata.json");\n// or: retreino serve ${n} --in-browser`,
};

async function loadExports() {
  const list = $("#exports");
  if (!state.run) { list.replaceChildren(el("li", { text: "Train a model first." })); return; }
  const r = await api(`/api/runs/${enc(state.run)}/exports`);
  list.replaceChildren(...r.exports.map((x) => el("li", { "data-format": x.format },
    el("strong", { text: x.format }), " ",
    el("span", { class: "meta", text: `${(x.bytes / 1e6).toFixed(1)} MB · ${x.files.join(", ")} · parity ${x.passed === true ? "ok" : x.passed === false ? "FAILED" : "–"}${x.latency_ms ? ` · ${x.latency_ms.toFixed(1)} ms per image (Keras ${(x.keras_latency_ms || 0).toFixed(1)})` : ""}` }), " ",
    el("a", { class: "download button", href: `/api/runs/${enc(state.run)}/exports/${enc(x.format)}.zip`, download: `${state.run}-${x.format}.zip`, text: "Download .zip" }),
    el("pre", { text: (SAMPLES[x.format] || (() => ""))(x.format) }))));
  if (!r.exports.length) list.append(el("li", { class: "meta", text: "No export yet: pick a format and press Export." }));
}

function wireExport() {
  $("#export-btn").addEventListener("click", guard(async () => {
    if (!state.run) throw new Error("train a model first");
    onJob((await api(`/api/runs/${enc(state.run)}/export`, { method: "POST", json: { format: $("#export-format").value } })).job);
  }));
}

// ---- start ----------------------------------------------------------------------------------------------
async function main() {
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  wireDrops(); wireCamera(); wireClassForms(); wireTraining(); wireModels(); wireEvaluation(); wireTry(); wireExport();
  const p = await api("/api/project");
  state.project = p;
  $("#project-name").textContent = p.name;
  $("#project-root").textContent = p.root;
  const d = p.defaults;
  if (d.model) $("#train-model").value = d.model;
  $("#train-epochs").value = d.epochs; $("#train-lr").value = d.learning_rate;
  $("#train-unfreeze").value = d.unfreeze; $("#train-batch").value = d.batch_size;
  setModels(p.models || []);
  $("#export-format").replaceChildren(...p.formats.map((f) => el("option", { value: f, text: f })));
  $("#export-format").value = "tflite";
  showCheck(await api("/api/check"));
  await loadClasses();
  await grid.open(state.current);
  await loadRuns();
  listen();
  document.body.dataset.ready = "1";
}

main().catch((e) => say(e.message));
