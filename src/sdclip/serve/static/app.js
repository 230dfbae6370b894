// sdclip serve: the live token view. Plain DOM, no framework, no network beyond this server.
// Every piece of user text goes in through textContent, never innerHTML.
"use strict";

const DEBOUNCE_MS = 150;
// shown rendered on a first visit (real text, not a placeholder), as `sdclip inspect` shows its example
const EXAMPLE = { prompt: "a (red:1.3) fox in a [misty] forest, highly detailed, BREAK golden hour light",
                  negative: "blurry, lowres" };
// what the address bar carries, so a copied URL opens the same view (?prompt=…&family=…)
const SELECTS = ["syntax", "family", "layout", "normalize", "preset"];
const $ = (id) => document.getElementById(id);
const state = { info: null, seq: 0, controller: null, timer: 0 };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k === "testid") node.dataset.testid = v;
    else if (k === "background") node.style.backgroundColor = v; // CSSOM: allowed by the page's CSP
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function fmt(w) {
  return Number(w.toFixed(4)).toString();
}

// colour by weight: green above 1, amber below, red at or below 0; stronger further from 1
function weightColour(w) {
  if (Math.abs(w - 1) < 1e-9) return null;
  if (w <= 0) return "hsla(0, 75%, 50%, 0.45)";
  const strength = Math.min(1, Math.abs(Math.log(w)) / Math.log(2));
  const hue = w > 1 ? 130 : 35;
  return `hsla(${hue}, 70%, 45%, ${(0.2 + 0.6 * strength).toFixed(3)})`;
}

function options() {
  const form = $("options");
  const out = {};
  for (const name of SELECTS) {
    const v = form.elements[name].value;
    if (v) out[name] = v;
  }
  return out;
}

function fillSelect(select, values, chosen, blankLabel, label = (v) => v) {
  select.replaceChildren();
  if (blankLabel) select.append(el("option", { value: "", text: blankLabel }));
  for (const v of values) select.append(el("option", { value: v, text: label(v), selected: v === chosen }));
}

async function loadInfo() {
  try {
    const r = await fetch("/api/info");
    state.info = await r.json();
  } catch (e) {
    state.info = { choices: { syntax: [], family: ["sd1"], layout: [], normalize: [], preset: ["a1111"] },
                   family: "sd1", embeddings: {} };
  }
  const c = state.info.choices;
  const form = $("options");
  // SD3 / Flux need the model's T5 tokenizer, the LLM families their own: say so in the list when this server has none
  const needsT5 = new Set(state.info.t5_tokenizer ? [] : (state.info.needs_t5 || []));
  const needsLLM = new Set(state.info.llm_tokenizer ? [] : (state.info.needs_llm || []));
  const family = (v) => (needsT5.has(v) ? `${v} (needs T5)` : needsLLM.has(v) ? `${v} (needs tokenizer)` : v);
  fillSelect(form.elements.syntax, c.syntax, null, "(preset's)");
  fillSelect(form.elements.family, c.family, state.info.family, null, family);
  fillSelect(form.elements.layout, c.layout, null, "(preset's)");
  fillSelect(form.elements.normalize, c.normalize, null, "(preset's)");
  fillSelect(form.elements.preset, c.preset, "a1111");
}

// the view from the address bar (?prompt=…&negative=…&family=…), else the example
function readUrl() {
  const q = new URLSearchParams(window.location.search);
  const shared = q.has("prompt") || q.has("negative");
  $("prompt").value = shared ? q.get("prompt") || "" : EXAMPLE.prompt;
  $("negative").value = shared ? q.get("negative") || "" : EXAMPLE.negative;
  const form = $("options");
  for (const name of SELECTS) {
    const v = q.get(name);
    if (v !== null && [...form.elements[name].options].some((o) => o.value === v)) form.elements[name].value = v;
  }
  if (q.has("embeddings")) form.elements.embeddings.value = q.get("embeddings");
  if (q.has("steps")) $("steps").value = q.get("steps");
  if (q.has("step")) $("step").value = q.get("step");
}

// the address bar follows the view (replaceState: no history entry per keystroke); defaults left out
function writeUrl() {
  const q = new URLSearchParams();
  q.set("prompt", $("prompt").value);
  if ($("negative").value) q.set("negative", $("negative").value);
  const form = $("options");
  const defaults = { family: state.info ? state.info.family : "sd1", preset: "a1111" };
  for (const name of SELECTS) {
    const v = form.elements[name].value;
    if (v && v !== (defaults[name] || "")) q.set(name, v);
  }
  if (form.elements.embeddings.value.trim()) q.set("embeddings", form.elements.embeddings.value.trim());
  const { steps, step } = schedule();
  if (steps !== 20) q.set("steps", String(steps));
  if (step !== 1) q.set("step", String(step));
  const url = `${window.location.pathname}?${q.toString()}`;
  if (url !== window.location.pathname + window.location.search) history.replaceState(null, "", url);
}

// "name:2, other:4" → {name: 2, other: 4}; a bare name means one vector; unreadable entries are skipped
function typedNames() {
  const out = {};
  for (const item of $("options").elements.embeddings.value.split(",")) {
    const m = item.trim().match(/^(.+?)(?::(\d+))?$/);
    if (m && m[1].trim()) out[m[1].trim()] = Math.min(75, Math.max(1, parseInt(m[2] || "1", 10)));
  }
  return out;
}

function schedule() {
  return { steps: Math.max(1, Math.min(1000, parseInt($("steps").value, 10) || 20)),
           step: parseInt($("step").value, 10) || 1 };
}

async function fetchView(text, signal) {
  const { steps, step } = schedule();
  const body = { prompt: text, ...options(), steps, step: Math.min(step, steps) };
  const names = { ...((state.info && state.info.embeddings) || {}), ...typedNames() };
  if (Object.keys(names).length) body.embedding_names = names;
  const r = await fetch("/api/view", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
  });
  let data;
  try { data = await r.json(); } catch (e) { data = { error: `HTTP ${r.status}`, position: null }; }
  return r.ok ? data : { error: data.error || `HTTP ${r.status}`, position: data.position ?? null };
}

function scheduleRefresh() {
  clearTimeout(state.timer);
  state.timer = setTimeout(refresh, DEBOUNCE_MS);
}

async function refresh() {
  const seq = ++state.seq;
  if (state.controller) state.controller.abort();
  state.controller = new AbortController();
  const signal = state.controller.signal;
  const prompt = $("prompt").value;
  const negative = $("negative").value;
  $("status").textContent = "…";
  let results;
  try {
    results = await Promise.all([fetchView(prompt, signal), fetchView(negative, signal)]);
  } catch (e) {
    if (e.name === "AbortError") return;
    results = [{ error: `server unreachable: ${e.message}`, position: null }, null];
  }
  if (seq !== state.seq) return; // a newer edit is on its way
  $("status").textContent = "";
  writeUrl();
  renderSchedule(results);
  renderView($("prompt-view"), "prompt", prompt, results[0]);
  renderView($("negative-view"), "negative", negative, results[1]);
  document.body.dataset.ready = String(seq); // tests wait on this
}

function renderSchedule(results) {
  const views = results.filter((r) => r && r.view);
  const scheduled = views.some((r) => r.view.scheduled);
  $("schedule").hidden = !scheduled;
  const { steps, step } = schedule();
  $("step").max = String(steps);
  if (step > steps) $("step").value = String(steps);
  $("step-label").textContent = `${Math.min(step, steps)} / ${steps}`;
  const first = views.find((r) => r.view.scheduled) || views[0];
  $("step-text").textContent = first ? first.view.text : "";
}

function renderError(section, text, result) {
  const box = el("div", { class: "error", testid: "error", role: "alert" });
  box.append(el("div", { class: "message", testid: "error-message", text: result.error }));
  if (result.position !== null && result.position !== undefined) {
    const pos = Math.max(0, Math.min(result.position, text.length));
    const lo = Math.max(0, pos - 60);
    const hi = Math.min(text.length, pos + 60);
    const prefix = lo > 0 ? "…" : "";
    const windowText = prefix + text.slice(lo, hi).replace(/[\n\t]/g, " ");
    const caret = " ".repeat(prefix.length + pos - lo) + "^";
    box.append(el("pre", { class: "caret", testid: "caret", "data-position": String(pos) }, `${windowText}\n${caret}`));
  }
  section.append(box);
}

function renderView(section, which, text, result) {
  section.replaceChildren();
  section.append(el("h2", { text: which }));
  if (!result) return;
  if (result.error !== undefined) {
    renderError(section, text, result);
    return;
  }
  const { inspect, view } = result;
  // an LLM family counts its prompt's tokens against max_sequence_length, not CLIP rows of 75
  const counter = view.lane ? el("span", {
    class: view.lane.dropped ? "counter over" : "counter", testid: "token-count",
    title: `${view.lane.count} prompt tokens of max_sequence_length ${view.lane.limit} (the template not counted)`,
    text: `${view.lane.count}/${view.lane.limit}`,
  }) : el("span", {
    class: inspect.dropped ? "counter over" : "counter", testid: "token-count",
    // a T5-only family draws no CLIP rows: its capacity is its parts' max_sequence_length, not rows of 75
    title: view.parts.some((p) => p.t5 && !p.rows.length)
      ? `${inspect.tokens} tokens; each part's T5 sequence of up to ${view.parts[0].capacity}`
      : `${inspect.tokens} tokens; ${inspect.capacity / view.per_row} row(s) of ${view.per_row}`,
    text: `${inspect.tokens}/${inspect.capacity}`,
  });
  section.querySelector("h2").append(" ", counter);
  if (view.scheduled) section.append(el("div", { class: "note", text: `step ${view.step} of ${view.steps}` }));
  if (inspect.dropped || view.source.some((s) => s.dropped)) {
    const source = el("div", { class: "source", testid: "source" });
    for (const seg of view.source) {
      source.append(seg.dropped ? el("del", { class: "dropped", testid: "dropped", title: "not in any row", text: seg.t })
                                : document.createTextNode(seg.t));
    }
    section.append(source);
  }
  const multi = view.parts.length > 1;
  let rowIndex = 0;
  view.parts.forEach((part, p) => {
    const box = el("div", { class: "part", testid: "part", "data-part": String(p) });
    if (multi || view.combine !== "single") {
      box.append(el("div", { class: "part-head", testid: "part-head",
        text: `part ${p + 1} · ${view.combine.toUpperCase()} weight ${fmt(part.weight)} · ${part.tokens}/${part.capacity}` }));
    }
    part.rows.forEach((row) => {
      if (row.break_before) box.append(el("div", { class: "break", testid: "break", text: "BREAK" }));
      box.append(renderRow(row, rowIndex++, view.per_row));
    });
    if (part.t5) box.append(renderT5(part.t5));
    if (part.lane) box.append(renderLane(part.lane));
    for (const note of part.notes) box.append(el("div", { class: "note", testid: "note", text: note }));
    if (part.dropped) box.append(el("div", { class: "dropped-text", testid: "dropped-text" },
      el("b", { text: "dropped: " }), el("del", { text: part.dropped })));
    section.append(box);
  });
  if (view.embeddings.length) {
    const list = el("ul", { class: "embeddings", testid: "embeddings" });
    for (const e of view.embeddings) {
      list.append(el("li", { testid: "embedding", text: `${e.name}: ${e.vectors} vector(s) at characters ${e.span[0]}–${e.span[1]}` }));
    }
    section.append(list);
  }
}

function renderRow(row, index, perRow) {
  const line = el("div", { class: "row", testid: "row", "data-row": String(index) });
  line.append(el("span", { class: "row-head", testid: "row-count", text: `${index + 1} · ${row.count}/${perRow}` }));
  const slots = el("span", { class: "slots" });
  row.slots.forEach((slot, s) => {
    if (slot.kind === "bos" || slot.kind === "eos" || slot.kind === "pad") {
      slots.append(el("span", { class: `special ${slot.kind}`, title: `slot ${s} · id ${slot.id}`, text: slot.kind.toUpperCase() }));
      return;
    }
    const classes = ["token", slot.kind];
    if (slot.cont) classes.push("cont");
    if (!slot.keep) classes.push("overlap");
    let title = `weight ${fmt(slot.w)} · id ${slot.id} · slot ${s}`;
    if (slot.kind === "vector") title = `embedding ${slot.name} vector ${slot.vector} · ` + title;
    if (slot.cont) title += " · continues the character before";
    if (!slot.keep) title += " · window overlap (not kept)";
    const label = slot.cont ? "+" : slot.t;
    slots.append(el("span", {
      class: classes.join(" "), testid: "token", title, background: weightColour(slot.w),
      "data-weight": String(slot.w), "data-id": String(slot.id), "data-keep": String(slot.keep), text: label,
    }));
  });
  if (row.pad) slots.append(el("span", { class: "special pad", title: `pad id ${row.pad_id}`, text: `+${row.pad} pad` }));
  line.append(slots);
  return line;
}

// SD3 / Flux: the part's T5 sequence, one chip per SentencePiece piece up to </s>
function renderT5(t5) {
  const line = el("div", { class: "row t5-row", testid: "t5-row" });
  const over = t5.dropped ? " over" : "";
  line.append(el("span", { class: `row-head${over}`, testid: "t5-count",
    title: `T5: ${t5.count} positions used (</s> included) of ${t5.capacity}; ${t5.length} encoded`,
    text: `T5 · ${t5.count}/${t5.capacity}` }));
  const chips = el("span", { class: "slots" });
  for (const p of t5.pieces) {
    if (p.special) {
      chips.append(el("span", { class: "special eos", title: `id ${p.id}`, text: p.piece }));
      continue;
    }
    chips.append(el("span", {
      class: p.word ? "token t5 word" : "token t5", testid: "t5-piece", background: weightColour(p.w),
      title: `weight ${fmt(p.w)} · id ${p.id} · piece ${JSON.stringify(p.piece)}`,
      "data-weight": String(p.w), "data-id": String(p.id), text: p.t,
    }));
  }
  const pad = t5.length - t5.pieces.length;
  if (pad > 0) chips.append(el("span", { class: "special pad", title: "pad id 0", text: `+${pad} pad` }));
  line.append(chips);
  const box = el("div", { class: "t5", testid: "t5" }, line);
  if (t5.dropped) box.append(el("div", { class: "dropped-text", testid: "t5-dropped" },
    el("b", { text: "T5 dropped: " }), el("del", { text: t5.dropped })));
  return box;
}

// an LLM family: its template + prompt, one chip per token (the prompt's as typed); the template greyed, the
// tokens the pipeline drops struck through, then the positions padded
function renderLane(lane) {
  const line = el("div", { class: "row lane-row", testid: "lane-row" });
  line.append(el("span", { class: `row-head${lane.dropped ? " over" : ""}`, testid: "lane-count",
    title: `${lane.count} prompt tokens of max_sequence_length ${lane.limit}; ${lane.length} positions encoded`,
    text: `${lane.count}/${lane.limit}` }));
  const chips = el("span", { class: "slots" });
  lane.tokens.forEach((tok, s) => {
    const classes = ["token", "llm"];
    if (tok.template) classes.push("template");
    if (!tok.kept) classes.push("not-kept");
    if (tok.cont) classes.push("cont");
    let title = `${tok.template ? "template" : `weight ${fmt(tok.w)}`} · id ${tok.id} · slot ${s} · piece ${JSON.stringify(tok.piece)}`;
    if (!tok.kept) title += " · dropped by the pipeline (not in the conditioning)";
    if (tok.cont) title += " · continues the character before";
    chips.append(el("span", {
      class: classes.join(" "), testid: tok.template ? "template-token" : "token", title,
      background: tok.template ? null : weightColour(tok.w), "data-id": String(tok.id), "data-weight": String(tok.w),
      "data-kept": String(tok.kept), text: tok.cont ? "+" : tok.t.replace(/\n/g, "⏎"),
    }));
  });
  const pad = lane.length - lane.tokens.length;
  if (pad > 0) chips.append(el("span", { class: "special pad", title: "masked pad positions", text: `+${pad} pad` }));
  line.append(chips);
  return el("div", { class: "lane", testid: "lane" }, line);
}

function init() {
  for (const id of ["prompt", "negative"]) $(id).addEventListener("input", scheduleRefresh);
  $("options").addEventListener("change", scheduleRefresh);
  $("options").addEventListener("input", scheduleRefresh);
  $("options").addEventListener("submit", (e) => e.preventDefault());
  $("step").addEventListener("input", scheduleRefresh);
  $("steps").addEventListener("input", scheduleRefresh);
  loadInfo().then(() => { readUrl(); refresh(); });
}

document.addEventListener("DOMContentLoaded", init);
