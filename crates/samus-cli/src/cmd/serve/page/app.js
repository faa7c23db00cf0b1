// The `samus serve` page: a list of images, a canvas to click on, and the JSON API
// of docs/SERVE.md (nothing else). Every prompt change asks the server for masks;
// the chosen mask is drawn tinted with its outline, and "accept" saves it.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const CLASS_COLOURS = ["#ff5252", "#40c4ff", "#ffd740", "#69f0ae", "#e040fb", "#ffab40"];
const DRAG_PIXELS = 5;

const state = {
  session: null,
  images: [],
  index: -1,
  image: null,          // HTMLImageElement of the current image
  view: { scale: 1, x: 0, y: 0 },
  // The prompts and their answer; history holds earlier ones for undo/redo.
  prompt: { points: [], box: null },
  answer: null,         // { response, masks: [{canvas, area}] }
  chosen: 0,
  history: [],
  future: [],
  saved: null,          // saved label map as a canvas of outlines, if any
  drag: null,
  spaceDown: false,
  busy: 0,             // predictions in flight
  opening: false,      // an image is loading or being embedded
  timings: [],          // click-to-mask milliseconds, for the status line and tests
  requestSeq: 0,        // bumped by every change of what the screen should show
  saving: false,        // a label is being saved
};

// Every change of what the screen should show (a prompt, an image, undo, redo,
// clear, AutoSAMUS, a class) takes a new number; work that was started for an older
// number drops its answer when it comes back.
function nextSeq() { return ++state.requestSeq; }
function isStale(seq, index) { return seq !== state.requestSeq || index !== state.index; }

// ---- the API ------------------------------------------------------------------

async function api(method, path, body) {
  // Every change is JSON, even without a body: the server refuses other changes
  // (so that another site's page cannot make them).
  const options = { method, headers: {} };
  if (method !== "GET") options.headers["Content-Type"] = "application/json";
  if (body !== undefined) options.body = JSON.stringify(body);
  const reply = await fetch(path, options);
  const text = await reply.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!reply.ok) {
    throw new Error((data && data.error) || `${method} ${path}: HTTP ${reply.status}`);
  }
  return data;
}

function status(text, isError) {
  const line = $("status");
  line.textContent = text;
  line.classList.toggle("error", !!isError);
}

// ---- masks as canvases --------------------------------------------------------

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show " + src.slice(0, 40)));
    img.src = src;
  });
}

// A 0/255 PNG -> a canvas at the image's size: the tint where the mask is on and an
// opaque outline where an on pixel touches an off one (4-neighbours).
async function maskLayer(pngBase64, colour) {
  const img = await loadImage("data:image/png;base64," + pngBase64);
  const w = img.naturalWidth, h = img.naturalHeight;
  const raw = document.createElement("canvas");
  raw.width = w; raw.height = h;
  const rctx = raw.getContext("2d", { willReadFrequently: true });
  rctx.drawImage(img, 0, 0);
  const src = rctx.getImageData(0, 0, w, h).data;
  const on = new Uint8Array(w * h);
  let area = 0;
  for (let i = 0; i < w * h; i++) { on[i] = src[i * 4] >= 128 ? 1 : 0; area += on[i]; }
  const layer = document.createElement("canvas");
  layer.width = w; layer.height = h;
  const lctx = layer.getContext("2d");
  const out = lctx.createImageData(w, h);
  const [r, g, b] = hexColour(colour);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      if (!on[i]) continue;
      const edge = onOutline(on, i, x, y, w, h);
      out.data[i * 4] = r; out.data[i * 4 + 1] = g; out.data[i * 4 + 2] = b;
      out.data[i * 4 + 3] = edge ? 255 : 100;
    }
  }
  lctx.putImageData(out, 0, 0);
  return { layer, on, width: w, height: h, area, png: pngBase64 };
}

// Whether pixel i = (x, y) of a w x h map of values lies on the outline of its
// region: at the image's border, or beside (4-neighbours) a different value.
function onOutline(values, i, x, y, w, h) {
  const v = values[i];
  return x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
    values[i - 1] !== v || values[i + 1] !== v || values[i - w] !== v || values[i + w] !== v;
}

function hexColour(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function classColour(id) { return CLASS_COLOURS[(id - 1) % CLASS_COLOURS.length]; }
function classId() { return Number($("class").value || 1); }

// ---- drawing ------------------------------------------------------------------

function resizeCanvas() {
  const r = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.max(1, Math.round(r.width * dpr));
  canvas.height = Math.max(1, Math.round(r.height * dpr));
  draw();
}

function fit() {
  if (!state.image) return;
  const w = canvas.width, h = canvas.height;
  const s = Math.min(w / state.image.naturalWidth, h / state.image.naturalHeight) * 0.96;
  state.view = {
    scale: s,
    x: (w - state.image.naturalWidth * s) / 2,
    y: (h - state.image.naturalHeight * s) / 2,
  };
  draw();
}

function draw() {
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!state.image) return;
  const v = state.view;
  ctx.setTransform(v.scale, 0, 0, v.scale, v.x, v.y);
  ctx.imageSmoothingEnabled = v.scale < 1;
  ctx.drawImage(state.image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  if (state.saved) ctx.drawImage(state.saved, 0, 0);
  const mask = currentMask();
  if (mask) ctx.drawImage(mask.layer, 0, 0);
  const dpr = window.devicePixelRatio || 1;
  const px = dpr / v.scale; // one screen pixel in image pixels
  const box = state.drag && state.drag.box ? state.drag.box : state.prompt.box;
  if (box) {
    ctx.strokeStyle = "#ffd740";
    ctx.lineWidth = 2 * px;
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
  for (const [x, y, label] of state.prompt.points) {
    ctx.beginPath();
    ctx.arc(x, y, 5 * px, 0, 2 * Math.PI);
    ctx.fillStyle = label === 1 ? "#3ddc84" : "#ff4081";
    ctx.fill();
    ctx.lineWidth = 1.5 * px;
    ctx.strokeStyle = "#000";
    ctx.stroke();
  }
}

function currentMask() {
  return state.answer ? state.answer.masks[state.chosen] || null : null;
}

// ---- the image list -----------------------------------------------------------

function renderList() {
  const nav = $("images");
  nav.textContent = "";
  state.images.forEach((im, i) => {
    const b = document.createElement("button");
    b.dataset.index = i;
    b.title = `${im.name} (${im.width}x${im.height})`;
    const thumb = document.createElement("img");
    thumb.loading = "lazy";
    thumb.alt = "";
    thumb.src = `/api/images/${im.id}/thumbnail`;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = im.name;
    const done = document.createElement("span");
    done.className = "done";
    done.textContent = im.labelled ? "✓" : "";
    b.append(thumb, name, done);
    b.addEventListener("click", () => openImage(i));
    nav.append(b);
  });
  markList();
}

function markList() {
  for (const b of $("images").children) {
    const i = Number(b.dataset.index);
    b.classList.toggle("current", i === state.index);
    b.lastChild.textContent = state.images[i].labelled ? "✓" : "";
  }
  const done = state.images.filter((im) => im.labelled).length;
  $("progress").textContent = `${done} of ${state.images.length} labelled`;
}

async function openImage(i) {
  if (i < 0 || i >= state.images.length) return;
  const im = state.images[i];
  nextSeq();
  state.index = i;
  state.prompt = { points: [], box: null };
  state.answer = null;
  state.history = [];
  state.future = [];
  state.saved = null;
  state.chosen = 0;
  markList();
  const current = $("images").children[i];
  if (current) current.scrollIntoView({ block: "nearest" });
  $("image-name").textContent = `${im.name} · ${im.width}×${im.height}`;
  renderCandidates();
  status(`loading ${im.name}…`);
  state.opening = true;
  try {
    state.image = await loadImage(`/api/images/${im.id}/image`);
    if (state.index !== i) return;
    fit();
    await showSavedLabel(im);
    status(`computing the embedding of ${im.name}…`);
    const e = await api("POST", `/api/images/${im.id}/embed`);
    if (state.index !== i) return;
    status(`${im.name}: embedding ${e.cached ? "cached" : "computed"} (${e.embed_ms.toFixed(0)} ms). Click the structure.`);
  } catch (err) {
    status(err.message, true);
  } finally {
    if (state.index === i) state.opening = false;
  }
  canvas.focus();
}

async function showSavedLabel(im) {
  if (!state.session.labels || !im.labelled) return;
  const index = state.index;
  const current = () => state.index === index && state.images[index] === im;
  try {
    const saved = await api("GET", `/api/images/${im.id}/label`);
    if (!current()) return;
    const img = await loadImage("data:image/png;base64," + saved.label_map);
    if (!current()) return;
    const w = img.naturalWidth, h = img.naturalHeight;
    const c = document.createElement("canvas");
    c.width = w; c.height = h;
    const cc = c.getContext("2d", { willReadFrequently: true });
    cc.drawImage(img, 0, 0);
    const src = cc.getImageData(0, 0, w, h).data;
    const classes = new Uint8Array(w * h);
    for (let i = 0; i < w * h; i++) classes[i] = src[i * 4];
    const out = cc.createImageData(w, h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x, v = classes[i];
        if (!v || !onOutline(classes, i, x, y, w, h)) continue;
        const [r, g, b] = hexColour(classColour(v));
        out.data.set([r, g, b, 200], i * 4);
      }
    }
    cc.putImageData(out, 0, 0);
    if (!current()) return;
    state.saved = c;
    draw();
  } catch (_) {
    if (current()) state.saved = null;
  }
}

// ---- prompts, predictions, undo -----------------------------------------------

// The prompt and, when it is the answer to that prompt (not one still on its way),
// the masks shown for it.
function snapshot() {
  const prompt = JSON.stringify(state.prompt);
  const answered = state.answer && state.answer.prompt === prompt;
  return {
    prompt: JSON.parse(prompt),
    answer: answered ? state.answer : null,
    chosen: answered ? state.chosen : 0,
  };
}

function restore(s) {
  nextSeq();
  state.prompt = s.prompt;
  state.answer = s.answer;
  state.chosen = s.chosen;
  renderCandidates();
  draw();
  // A prompt whose answer had not come yet is asked again.
  if (!s.answer && (s.prompt.points.length || s.prompt.box)) predict();
}

function changePrompt(change) {
  state.history.push(snapshot());
  state.future = [];
  change(state.prompt);
  predict();
}

async function predict(startedAt) {
  const im = state.images[state.index];
  if (!im) return;
  const t0 = startedAt || performance.now();
  const seq = nextSeq(), index = state.index;
  const p = state.prompt;
  if (!p.points.length && !p.box) {
    state.answer = null;
    renderCandidates();
    draw();
    status("no prompt: click the structure");
    return;
  }
  state.busy++;
  try {
    const response = await api("POST", `/api/images/${im.id}/predict`, {
      points: p.points,
      box: p.box,
      multimask: $("multimask").checked,
    });
    if (isStale(seq, index)) return; // a newer click's answer is on its way
    await showAnswer(response, t0, "mask", seq, index);
  } catch (err) {
    if (!isStale(seq, index)) status(err.message, true);
  } finally {
    state.busy--;
  }
}

// Shows `response` unless something newer than `seq` happened meanwhile; the
// chosen candidate is kept when only the colour changes (`keepChosen`).
async function showAnswer(response, t0, what, seq, index, keepChosen) {
  const colour = classColour(classId());
  const prompt = state.answer && keepChosen ? state.answer.prompt : JSON.stringify(state.prompt);
  const masks = [];
  for (let k = 0; k < response.masks.length; k++) {
    masks.push(await maskLayer(response.masks[k], colour));
    if (isStale(seq, index)) return;
  }
  const chosen = keepChosen ? Math.min(state.chosen, masks.length - 1) : 0;
  state.answer = { response, masks, prompt };
  state.chosen = chosen;
  renderCandidates();
  draw();
  // The time to the mask on screen: after the browser has painted this frame.
  await new Promise((r) => requestAnimationFrame(() => r()));
  const ms = performance.now() - t0;
  state.timings.push(ms);
  const embed = response.cached ? "embedding cached" : `embedding ${response.embed_ms.toFixed(0)} ms`;
  status(`${what} in ${ms.toFixed(0)} ms (decoder ${response.decode_ms.toFixed(1)} ms, ${embed}) · ` +
    `predicted IoU ${response.iou[0].toFixed(3)} · ${response.area[0]} px`);
}

function renderCandidates() {
  const box = $("candidates");
  box.textContent = "";
  if (!state.answer) return;
  state.answer.response.iou.forEach((iou, k) => {
    const b = document.createElement("button");
    b.className = k === state.chosen ? "chosen" : "";
    b.innerHTML = `<span>${k + 1}. mask</span><span>IoU ${iou.toFixed(3)}</span>`;
    b.title = `${state.answer.response.area[k]} pixels (key ${k + 1})`;
    b.addEventListener("click", () => choose(k));
    box.append(b);
  });
}

function choose(k) {
  if (!state.answer || k >= state.answer.masks.length) return;
  state.chosen = k;
  renderCandidates();
  draw();
}

function undo() {
  if (!state.history.length) return;
  state.future.push(snapshot());
  restore(state.history.pop());
  status("undone");
}

function redo() {
  if (!state.future.length) return;
  state.history.push(snapshot());
  restore(state.future.pop());
  status("redone");
}

function clearPrompts() {
  if (!state.prompt.points.length && !state.prompt.box) return;
  state.history.push(snapshot());
  state.future = [];
  nextSeq();
  state.prompt = { points: [], box: null };
  state.answer = null;
  renderCandidates();
  draw();
  status("prompts cleared");
}

async function runAuto() {
  const im = state.images[state.index];
  if (!im || !state.session.auto) return;
  state.history.push(snapshot());
  state.future = [];
  state.prompt = { points: [], box: null };
  const t0 = performance.now();
  const seq = nextSeq(), index = state.index;
  status("AutoSAMUS…");
  state.busy++;
  try {
    const response = await api("POST", `/api/images/${im.id}/auto`);
    if (isStale(seq, index)) return;
    await showAnswer(response, t0, "auto mask", seq, index);
  } catch (err) {
    if (!isStale(seq, index)) status(err.message, true);
  } finally {
    state.busy--;
  }
}

async function accept(thenNext) {
  const im = state.images[state.index];
  const mask = currentMask();
  if (!im) return;
  if (!state.session.labels) {
    status("labels cannot be saved: start samus serve with --labels OUT_ROOT", true);
    return;
  }
  if (!mask) {
    status("nothing to save yet: click the structure first", true);
    return;
  }
  if (state.saving) return; // one save at a time (a held Enter, a double click)
  state.saving = true;
  const index = state.index;
  try {
    const saved = await api("PUT", `/api/images/${im.id}/label`, {
      class_id: classId(),
      mask: mask.png,
    });
    im.labelled = true;
    markList();
    const kept = saved.previous ? ` (previous label kept in ${saved.previous})` : "";
    // The user may have moved on while it saved: then stay where they are.
    if (state.index !== index) return;
    status(`saved ${saved.label}${kept}`);
    if (thenNext && index + 1 < state.images.length) {
      await openImage(index + 1);
      if (state.index === index + 1) {
        status(`saved ${saved.label}${kept} · now ${state.images[state.index].name}`);
      }
    } else {
      await showSavedLabel(im);
    }
  } catch (err) {
    if (state.index === index) status(err.message, true);
  } finally {
    state.saving = false;
  }
}

// ---- mouse and keyboard -------------------------------------------------------

function toImage(ev) {
  const r = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const v = state.view;
  const x = ((ev.clientX - r.left) * dpr - v.x) / v.scale;
  const y = ((ev.clientY - r.top) * dpr - v.y) / v.scale;
  return [x, y];
}

function insideImage([x, y]) {
  const im = state.images[state.index];
  return im && x >= 0 && y >= 0 && x <= im.width && y <= im.height;
}

function clampToImage([x, y]) {
  const im = state.images[state.index];
  return [Math.min(Math.max(x, 0), im.width), Math.min(Math.max(y, 0), im.height)];
}

canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());

canvas.addEventListener("mousedown", (ev) => {
  canvas.focus();
  const pan = ev.button === 1 || (ev.button === 0 && state.spaceDown);
  state.drag = {
    start: [ev.clientX, ev.clientY],
    at: toImage(ev),
    button: ev.button,
    shift: ev.shiftKey,
    pan,
    view: { ...state.view },
    box: null,
    t0: performance.now(),
  };
  if (pan) ev.preventDefault();
});

window.addEventListener("mousemove", (ev) => {
  const d = state.drag;
  if (!d) return;
  const dx = ev.clientX - d.start[0], dy = ev.clientY - d.start[1];
  if (d.pan) {
    const dpr = window.devicePixelRatio || 1;
    state.view.x = d.view.x + dx * dpr;
    state.view.y = d.view.y + dy * dpr;
    draw();
    return;
  }
  if (d.button === 0 && !d.shift && Math.hypot(dx, dy) > DRAG_PIXELS) {
    const a = clampToImage(d.at), b = clampToImage(toImage(ev));
    d.box = [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])];
    draw();
  }
});

window.addEventListener("mouseup", (ev) => {
  const d = state.drag;
  state.drag = null;
  if (!d || d.pan || !state.image) return;
  const t0 = d.t0;
  if (d.box) {
    const box = d.box.map((v) => Math.round(v * 10) / 10);
    if (box[2] - box[0] >= 1 && box[3] - box[1] >= 1) {
      state.history.push(snapshot());
      state.future = [];
      state.prompt.box = box;
      predict(t0);
    } else {
      draw();
    }
    return;
  }
  if (!insideImage(d.at)) return;
  const label = d.button === 2 || d.shift ? 0 : 1;
  if (d.button !== 0 && d.button !== 2) return;
  const [x, y] = d.at.map((v) => Math.round(v * 10) / 10);
  state.history.push(snapshot());
  state.future = [];
  state.prompt.points.push([x, y, label]);
  draw();
  predict(t0);
});

canvas.addEventListener("wheel", (ev) => {
  ev.preventDefault();
  zoomAt(ev.deltaY < 0 ? 1.15 : 1 / 1.15, ev);
}, { passive: false });

function zoomAt(factor, ev) {
  const r = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const cx = ev ? (ev.clientX - r.left) * dpr : canvas.width / 2;
  const cy = ev ? (ev.clientY - r.top) * dpr : canvas.height / 2;
  const v = state.view;
  const s = Math.min(Math.max(v.scale * factor, 0.05), 40);
  state.view = { scale: s, x: cx - (cx - v.x) * (s / v.scale), y: cy - (cy - v.y) * (s / v.scale) };
  draw();
}

function pan(dx, dy) {
  state.view.x += dx;
  state.view.y += dy;
  draw();
}

window.addEventListener("keydown", (ev) => {
  if (ev.target instanceof HTMLSelectElement || ev.target instanceof HTMLInputElement) {
    if (ev.key !== "Enter" && ev.key !== "Escape") return;
  }
  // A focused button acts on Enter and space itself.
  if (ev.target instanceof HTMLButtonElement && (ev.key === "Enter" || ev.key === " ")) return;
  // A held key repeats: save or move once per press.
  if (ev.repeat && ["Enter", "s", "S", "a", "A", "n", "N", "p", "P"].includes(ev.key)) {
    ev.preventDefault();
    return;
  }
  const key = ev.key;
  const ctrl = ev.ctrlKey || ev.metaKey;
  let handled = true;
  if (key === " ") { state.spaceDown = true; canvas.classList.add("panning"); }
  else if (ctrl && key.toLowerCase() === "z" && ev.shiftKey) redo();
  else if (ctrl && key.toLowerCase() === "z") undo();
  else if (ctrl) handled = false;
  else if (key === "z" || key === "Z") undo();
  else if (key === "y" || key === "Y") redo();
  else if (key === "Escape") clearPrompts();
  else if (key === "Enter") accept(true);
  else if (key === "s" || key === "S") accept(false);
  else if (key === "n" || key === "N" || key === "PageDown") openImage(state.index + 1);
  else if (key === "p" || key === "P" || key === "PageUp") openImage(state.index - 1);
  else if (key === "a" || key === "A") runAuto();
  else if (key === "m" || key === "M") { $("multimask").checked = !$("multimask").checked; predict(); }
  else if (key === "c" || key === "C") nextClass();
  else if (key === "1" || key === "2" || key === "3") choose(Number(key) - 1);
  else if (key === "+" || key === "=") zoomAt(1.25);
  else if (key === "-" || key === "_") zoomAt(1 / 1.25);
  else if (key === "0") fit();
  else if (key === "ArrowLeft") pan(60, 0);
  else if (key === "ArrowRight") pan(-60, 0);
  else if (key === "ArrowUp") pan(0, 60);
  else if (key === "ArrowDown") pan(0, -60);
  else handled = false;
  if (handled) ev.preventDefault();
});

function releaseSpace() { state.spaceDown = false; canvas.classList.remove("panning"); }
window.addEventListener("keyup", (ev) => { if (ev.key === " ") releaseSpace(); });
// A space released in another window never sends its keyup here.
window.addEventListener("blur", releaseSpace);

function nextClass() {
  const sel = $("class");
  sel.selectedIndex = (sel.selectedIndex + 1) % sel.options.length;
  recolour();
}

async function recolour() {
  if (!state.answer) return;
  const seq = nextSeq(), index = state.index;
  await showAnswer(state.answer.response, performance.now(), "mask", seq, index, true);
}

$("class").addEventListener("change", recolour);
$("multimask").addEventListener("change", () => predict());
$("undo").addEventListener("click", undo);
$("redo").addEventListener("click", redo);
$("clear").addEventListener("click", clearPrompts);
$("auto").addEventListener("click", runAuto);
$("prev").addEventListener("click", () => openImage(state.index - 1));
$("next").addEventListener("click", () => openImage(state.index + 1));
$("accept").addEventListener("click", () => accept(true));
window.addEventListener("resize", () => { resizeCanvas(); fit(); });

// Moving the window to a screen of another pixel density (or zooming the page)
// changes devicePixelRatio without a resize on every browser: redraw sharp then.
function watchPixelRatio() {
  const query = matchMedia(`(resolution: ${window.devicePixelRatio || 1}dppx)`);
  query.addEventListener("change", () => { resizeCanvas(); fit(); watchPixelRatio(); }, { once: true });
}
watchPixelRatio();

// ---- start --------------------------------------------------------------------

async function start() {
  resizeCanvas();
  try {
    state.session = await api("GET", "/api/session");
    state.images = await api("GET", "/api/images");
  } catch (err) {
    status(err.message, true);
    return;
  }
  const s = state.session;
  $("checkpoint").textContent = `${s.checkpoint} · dataset ${s.dataset}` + (s.labels ? "" : " · labels not saved (no --labels)");
  const sel = $("class");
  for (const c of s.classes) {
    const o = document.createElement("option");
    o.value = c.id;
    o.textContent = `${c.id}: ${c.name}`;
    sel.append(o);
  }
  $("auto").disabled = !s.auto;
  $("auto").title = s.auto ? "AutoSAMUS (A)" : "start samus serve with --apg to enable";
  $("accept").disabled = !s.labels;
  renderList();
  const first = state.images.findIndex((im) => !im.labelled);
  await openImage(first >= 0 ? first : 0);
}

// For tests and scripts: the page's state, read only.
window.samus = {
  state,
  ready: () => !!state.image && state.busy === 0 && !state.opening,
  maskPng: () => {
    const m = currentMask();
    return m ? m.png : null;
  },
  // The mask as drawn (the tint's pixels), as 0/1 per pixel, run-length encoded.
  drawnMask: () => {
    const m = currentMask();
    if (!m) return null;
    const d = m.layer.getContext("2d").getImageData(0, 0, m.width, m.height).data;
    let out = [], run = 0, value = 0;
    for (let i = 0; i < m.width * m.height; i++) {
      const v = d[i * 4 + 3] > 0 ? 1 : 0;
      if (v !== value) { out.push(run); run = 0; value = v; }
      run++;
    }
    out.push(run);
    return { width: m.width, height: m.height, runs: out };
  },
  toScreen: (x, y) => {
    const r = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const v = state.view;
    return [r.left + (x * v.scale + v.x) / dpr, r.top + (y * v.scale + v.y) / dpr];
  },
};

start();
