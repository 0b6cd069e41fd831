// "Inside the model": the prompt's tokens coloured by id, an attention heatmap for a chosen
// layer/head, and next-token probabilities under a temperature slider, from /glass/... ; and,
// for an answer from documents (documents.js asks /glass/sources), a bar per source for its
// share of the answer's attention and a heatmap over the answer's tokens.
// Loaded after app.js and uses its TEXT, t(), state.lang and api(). Model text (token pieces)
// only ever reaches the page through textContent.
"use strict";

Object.assign(TEXT.en, {
  glassTitle: "Inside the model", glassPlaceholder: "A sentence to look at, e.g. The capital of France is",
  glassChat: "as a chat question (chat template)", glassRun: "Look inside", glassTokens: "Tokens",
  glassAttention: "Attention", glassLayer: "layer", glassHead: "head", glassAverage: "average",
  glassNext: "Next token", glassTemperature: "temperature", glassTokenCount: "{n} tokens, {b} bytes",
  glassHoverHelp: "Hover over a cell: how much a token (row) looks at an earlier one (column).",
  glassEntropy: "entropy {h} bits", glassBytes: "bytes", glassSources: "Sources of the answer",
  glassSourcesSummary: "{r}% of the answer's attention went to the sources, {o}% to the instructions, the question and its own words.",
  glassSourcesHelp: "Answer tokens shaded by their attention to the sources; click a source to see only it.",
});
Object.assign(TEXT.es, {
  glassTitle: "Dentro del modelo", glassPlaceholder: "Una frase que mirar, p. ej. La capital de Francia es",
  glassChat: "como pregunta de chat (plantilla de chat)", glassRun: "Mirar dentro", glassTokens: "Tokens",
  glassAttention: "Atención", glassLayer: "capa", glassHead: "cabeza", glassAverage: "media",
  glassNext: "Siguiente token", glassTemperature: "temperatura", glassTokenCount: "{n} tokens, {b} bytes",
  glassHoverHelp: "Pasa el ratón por una celda: cuánto mira un token (fila) a otro anterior (columna).",
  glassEntropy: "entropía {h} bits", glassBytes: "bytes", glassSources: "Fuentes de la respuesta",
  glassSourcesSummary: "El {r}% de la atención de la respuesta fue a las fuentes y el {o}% a las instrucciones, la pregunta y sus propias palabras.",
  glassSourcesHelp: "Tokens de la respuesta sombreados según su atención a las fuentes; haz clic en una fuente para ver solo esa.",
});

// One forward pass answers every temperature the slider can reach: 0, 0.1, ..., 2.
const GLASS_TEMPERATURES = Array.from({ length: 21 }, (_, i) => Math.round(i * 10) / 100);
const HEAT_FULL = [179, 84, 30];  // a weight of 1 (the page's accent colour); 0 is white
const glass = { text: null, raw: true, tokens: null, attention: null, attentionAsked: 0, next: null, sources: null };

function glassFormat(key, values) {
  return t(key).replace(/\{(\w+)\}/g, (_, name) => String(values[name]));
}

// A piece made visible: spaces as ␣, line breaks as ↵ (as the CLI's tables show them).
function shownPiece(piece) {
  return piece.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
}

function tokenColour(id) {
  return `hsl(${(id * 137.508) % 360}, 70%, 84%)`;  // golden angle: neighbouring ids differ
}

// The chat's model choice (app.js) holds here too: with an adapter chosen, the views show the
// model with that adapter. Tokens need no model: adapters leave the tokenizer alone.
function glassModel() {
  const model = chosenModel();
  return model ? { model } : {};
}

function glassError(error) {
  $("glass-error").textContent = error ? String(error.message || error) : "";
  $("glass-error").hidden = !error;
}

async function glassRun() {
  const text = $("glass-text").value;
  if (!text.trim()) return;
  glassError(null);
  glass.text = text;
  glass.raw = !$("glass-chat").checked;
  const results = await Promise.allSettled([glassTokens(), glassAttention(), glassNext()]);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) glassError(failed.reason);
}

async function glassTokens() {
  const view = await api("/glass/tokens", "POST", { text: glass.text });
  const box = $("glass-tokens");
  box.replaceChildren();
  for (const token of view.tokens) {
    const el = document.createElement("span");
    el.className = "token";
    el.dataset.id = token.id;
    el.style.background = tokenColour(token.id);
    el.title = `id ${token.id} · ${token.bytes} ${t("glassBytes")}`;
    const piece = document.createElement("span");
    piece.className = "piece";
    piece.textContent = shownPiece(token.piece);
    const id = document.createElement("small");
    id.textContent = token.id;
    el.append(piece, id);
    box.append(el);
  }
  glass.tokens = view;
  drawTokenCount();
}

function drawTokenCount() {
  $("glass-token-count").textContent = glassFormat("glassTokenCount", { n: glass.tokens.n_tokens, b: glass.tokens.n_bytes });
}

function choice(select) {
  return select.value === "" ? null : parseInt(select.value, 10);
}

async function glassAttention() {
  if (glass.text === null) return;
  const body = { text: glass.text, raw: glass.raw, layer: choice($("glass-layer")), head: choice($("glass-head")),
    ...glassModel() };
  const asked = ++glass.attentionAsked;
  const view = await api("/glass/attention", "POST", body);
  if (asked !== glass.attentionAsked) return;  // a newer choice is on its way: draw that one
  glass.attention = view;
  fillChoices($("glass-layer"), glass.attention.n_layers);
  fillChoices($("glass-head"), glass.attention.n_heads);
  drawHeatmap();
}

function fillChoices(select, n) {
  if (select.options.length === n + 1) return;
  const chosen = select.value;
  select.replaceChildren(new Option(t("glassAverage"), ""));
  for (let i = 0; i < n; i++) select.append(new Option(String(i), String(i)));
  select.value = chosen;
}

function drawHeatmap() {
  const canvas = $("glass-heatmap");
  const { matrix } = glass.attention;
  const n = matrix.length;
  const cell = Math.max(2, Math.floor(canvas.width / n));
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      // sqrt so that weights of a few percent still show next to one big one.
      const w = Math.sqrt(matrix[i][j]);
      ctx.fillStyle = `rgb(${HEAT_FULL.map((c) => Math.round(255 + (c - 255) * w)).join(", ")})`;
      ctx.fillRect(j * cell, i * cell, cell, cell);
    }
  }
  drawAxes(glass.attention.tokens, cell / canvas.width);
  canvas.dataset.tokens = n;
  canvas.dataset.cell = cell;
  const { layer, head } = glass.attention;
  canvas.dataset.shown = `${layer ?? "mean"}/${head ?? "mean"}`;  // which map is drawn
  $("glass-hover").textContent = t("glassHoverHelp");
}

// The tokens along both axes: a row looks at the columns to its left. Each label spans one
// cell (as a share of the canvas, which CSS may shrink); too small to read, it hides but stays
// as a tooltip.
const AXIS_MIN_CELL = 7;  // pixels

function drawAxes(tokens, share) {
  const tiny = share * $("glass-heatmap").getBoundingClientRect().width < AXIS_MIN_CELL;
  for (const [id, size] of [["glass-rows", "height"], ["glass-columns", "width"]]) {
    const axis = $(id);
    axis.classList.toggle("tiny", tiny);
    axis.replaceChildren(...tokens.map((piece) => {
      const label = document.createElement("span");
      label.textContent = shownPiece(piece);
      label.title = piece;
      label.style[size] = `${100 * share}%`;
      return label;
    }));
  }
}

function hoverHeatmap(event) {
  const view = glass.attention;
  if (!view) return;
  const canvas = $("glass-heatmap");
  const cell = parseInt(canvas.dataset.cell, 10);
  const scale = canvas.width / canvas.getBoundingClientRect().width;  // CSS may shrink the canvas
  const i = Math.floor(event.offsetY * scale / cell);
  const j = Math.floor(event.offsetX * scale / cell);
  if (i >= view.tokens.length || j > i) return;
  $("glass-hover").textContent =
    `«${shownPiece(view.tokens[i])}» → «${shownPiece(view.tokens[j])}»: ${view.matrix[i][j].toFixed(4)}`;
}

async function glassNext() {
  glass.next = await api("/glass/next", "POST",
    { prompt: glass.text, raw: glass.raw, temperatures: GLASS_TEMPERATURES, top: 10, ...glassModel() });
  drawNext();
}

function drawNext() {
  if (!glass.next) return;
  const temperature = parseFloat($("glass-temperature").value);
  $("glass-temperature-value").textContent = temperature.toFixed(1);
  const dist = glass.next.distributions.reduce((best, d) =>
    Math.abs(d.temperature - temperature) < Math.abs(best.temperature - temperature) ? d : best);
  const list = $("glass-next");
  list.replaceChildren();
  glass.next.tokens.forEach((token, k) => {
    const p = dist.probs[k];
    const item = document.createElement("li");
    const piece = document.createElement("span");
    piece.className = "piece";
    piece.textContent = shownPiece(token.piece);
    piece.style.background = tokenColour(token.id);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(100 * p).toFixed(1)}%`;
    const share = document.createElement("span");
    share.className = "prob";
    share.textContent = `${(100 * p).toFixed(p >= 0.001 ? 1 : 3)}%`;
    const track = document.createElement("span");
    track.className = "track";
    track.append(bar);
    item.append(piece, track, share);
    list.append(item);
  });
  $("glass-entropy").textContent = glassFormat("glassEntropy", { h: dist.entropy_bits.toFixed(2) });
}

// For an answer from documents: view is /glass/sources's answer, sources the answer's list.
// A bar per source (its share of the answer's attention); the answer's tokens shaded by the
// attention each paid to the sources (all of them, or the one clicked).
function showSourceAttention(view, sources) {
  glass.sources = { view, sources, chosen: null };
  $("glass-sources-section").hidden = false;
  drawSourceAttention();
  $("glass-sources-section").scrollIntoView({ block: "nearest" });
}

function drawSourceAttention() {
  const { view, sources, chosen } = glass.sources;
  const percent = (x) => (100 * x).toFixed(1);
  $("glass-sources-summary").textContent = glassFormat("glassSourcesSummary",
    { r: percent(view.retrieved), o: percent(view.other) });
  const list = $("glass-sources");
  list.replaceChildren(...view.sources.map((s, k) => {
    const item = document.createElement("li");
    item.dataset.index = s.index;
    item.classList.toggle("chosen", chosen === k);
    const label = Object.assign(document.createElement("span"), { className: "piece",
      textContent: `[${s.index}] ${sources[k]?.source ?? s.source}` });
    const bar = Object.assign(document.createElement("span"), { className: "bar" });
    bar.style.width = `${percent(Math.min(1, s.share))}%`;
    const track = Object.assign(document.createElement("span"), { className: "track" });
    track.append(bar);
    const share = Object.assign(document.createElement("span"), { className: "prob", textContent: `${percent(s.share)}%` });
    item.append(label, track, share);
    item.addEventListener("click", () => { glass.sources.chosen = chosen === k ? null : k; drawSourceAttention(); });
    return item;
  }));
  // The heatmap: per answer token, its attention to the chosen source (or to all), scaled to
  // the largest in the answer so that the shape shows whatever the level.
  const values = view.per_token.map((row) => (chosen === null ? row.reduce((a, b) => a + b, 0) : row[chosen]));
  const top = Math.max(...values, 1e-9);
  $("glass-answer").replaceChildren(...view.tokens.map((piece, i) => {
    const token = Object.assign(document.createElement("span"), { className: "piece", textContent: piece });
    const w = values[i] / top;
    token.style.background = `rgba(${HEAT_FULL.join(", ")}, ${(0.85 * w).toFixed(3)})`;
    token.title = view.sources.map((s, k) => `[${s.index}] ${percent(view.per_token[i][k])}%`).join(" · ");
    return token;
  }));
  $("glass-answer-help").textContent = t("glassSourcesHelp");
}

function glassInit() {
  $("glass-form").addEventListener("submit", (event) => {
    event.preventDefault();
    glassRun().catch(glassError);
  });
  for (const id of ["glass-layer", "glass-head"]) {
    $(id).addEventListener("change", () => glassAttention().catch(glassError));
  }
  $("glass-temperature").addEventListener("input", drawNext);
  // Another model (or adapter) chosen: look again at the same text with it.
  $("model").addEventListener("change", () => { if (glass.text !== null) glassRun().catch(glassError); });
  $("glass-heatmap").addEventListener("mousemove", hoverHeatmap);
  // The language button re-labels the page (app.js); the "average" options and counts here.
  $("lang").addEventListener("click", () => {
    for (const id of ["glass-layer", "glass-head"]) {
      const first = $(id).options[0];
      if (first) first.textContent = t("glassAverage");
    }
    if (glass.tokens) drawTokenCount();
    if (glass.next) drawNext();
    if (glass.attention) $("glass-hover").textContent = t("glassHoverHelp");
    if (glass.sources) drawSourceAttention();
  });
}

document.addEventListener("DOMContentLoaded", glassInit);
