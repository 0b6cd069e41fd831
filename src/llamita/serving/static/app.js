// The llamita web chat: conversations kept by /ui/..., answers streamed from /v1/chat/completions.
"use strict";

const PRESETS = {
  preciso: { temperature: 0.1, top_p: 0.95, top_k: 40 },
  equilibrado: { temperature: 0.7, top_p: 0.9, top_k: 40 },
  creativo: { temperature: 0.8, top_p: 0.95, top_k: 50 },
};
const DEFAULT_MAX_TOKENS = 512;
const PARAM_FIELDS = ["temperature", "top_p", "top_k", "max_tokens"];

const TEXT = {
  en: {
    new: "New conversation", export: "Export feedback (JSONL)", forgetKey: "Forget API key",
    system: "System prompt", systemPlaceholder: "You are a helpful assistant.", preset: "Preset",
    preciso: "precise", equilibrado: "balanced", creativo: "creative", custom: "custom",
    messagePlaceholder: "Write a message… (Enter sends, Shift+Enter for a new line)", send: "Send", stop: "Stop",
    rename: "Rename", delete: "Delete", renamePrompt: "New title:", deleteConfirm: "Delete this conversation?",
    untitled: "Untitled", good: "Good answer", bad: "Bad answer", stopped: "stopped",
    keyPrompt: "This server needs an API key:", tokensPerSecond: "tokens/s", model: "Model",
    contextTokens: "{n}-token context", loaded: "loaded", loading: "loading…",
    baseModel: "{name} (base)", copy: "Copy", copied: "Copied", regenerate: "Regenerate", edit: "Edit and resend",
    resend: "Send", cancel: "Cancel", search: "Search conversations", theme: "Dark / light",
  },
  es: {
    new: "Nueva conversación", export: "Exportar valoraciones (JSONL)", forgetKey: "Olvidar la clave de API",
    system: "Prompt de sistema", systemPlaceholder: "Eres un asistente útil.", preset: "Ajuste",
    preciso: "preciso", equilibrado: "equilibrado", creativo: "creativo", custom: "a medida",
    messagePlaceholder: "Escribe un mensaje… (Intro envía, Mayús+Intro nueva línea)", send: "Enviar",
    stop: "Detener", rename: "Renombrar", delete: "Borrar", renamePrompt: "Nuevo título:",
    deleteConfirm: "¿Borrar esta conversación?", untitled: "Sin título", good: "Buena respuesta",
    bad: "Mala respuesta", stopped: "detenida", keyPrompt: "Este servidor pide una clave de API:",
    tokensPerSecond: "tokens/s", model: "Modelo", contextTokens: "contexto de {n} tokens", loaded: "cargado", loading: "cargando…", baseModel: "{name} (base)", copy: "Copiar", copied: "Copiado",
    regenerate: "Regenerar", edit: "Editar y reenviar", resend: "Enviar", cancel: "Cancelar",
    search: "Buscar conversaciones", theme: "Oscuro / claro",
  },
};

const $ = (id) => document.getElementById(id);
const state = { lang: "en", conversations: [], current: null, abort: null, models: [] };

function t(key) { return TEXT[state.lang][key] || TEXT.en[key] || key; }

function applyLanguage() {
  document.documentElement.lang = state.lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of document.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  $("lang").textContent = state.lang === "es" ? "EN" : "ES";
  renderConversationList();
  renderMessages();
  showModelFacts();
}

// HTTP: the API key (when the server wants one) is asked once and kept in localStorage.
function authHeaders() {
  const key = localStorage.getItem("llamita.apiKey");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function request(path, options = {}, retried = false) {
  // A FormData body (file uploads) gets its multipart Content-Type, with the boundary, from the browser.
  const json = options.body && !(options.body instanceof FormData);
  const headers = { ...authHeaders(), ...(json ? { "Content-Type": "application/json" } : {}), ...options.headers };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 && !retried) {
    const key = window.prompt(t("keyPrompt"));
    if (key) {
      localStorage.setItem("llamita.apiKey", key.trim());
      $("forget-key").hidden = false;
      return request(path, options, true);
    }
  }
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error.message || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

async function api(path, method = "GET", body = undefined) {
  const response = await request(path, { method, body: body === undefined ? undefined : JSON.stringify(body) });
  return response.status === 204 ? null : response.json();
}

function showError(error) {
  $("error").textContent = error ? String(error.message || error) : "";
  $("error").hidden = !error;
}

// Models: the served model, one "<base>+NAME" per LoRA adapter, then the library's models
// (/v1/models), with what /api/ps says of the loaded ones (parameters, quantization, size,
// context window); where some are not loaded, the loaded ones are marked. The picker is always
// shown, so the page says which model answers; each conversation keeps its choice.
async function loadModels() {
  const [models, running] = await Promise.all([api("/v1/models"), api("/api/ps").catch(() => ({ models: [] }))]);
  const facts = new Map(running.models.map((m) => [m.name, m]));
  state.models = models.data.map((m) => ({ ...m, facts: facts.get(m.id) }));
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(...state.models.map((m) => new Option(modelLabel(m), m.id)));
  if (state.models.some((m) => m.id === chosen)) select.value = chosen;
  showModelFacts();
}

// Choosing a model that is not loaded loads it now (Ollama's empty request), so the first
// message does not wait for it; the list then marks it loaded.
async function chooseModel() {
  showModelFacts();
  const m = state.models.find((x) => x.id === $("model").value);
  if (!m || m.facts || m.parent) return;
  $("model-facts").textContent = t("loading");
  await api("/api/generate", "POST", { model: m.id, prompt: "" });
  await loadModels();
}

function showModelFacts() {
  const f = state.models.find((m) => m.id === $("model").value)?.facts;
  $("model-facts").textContent = f ? [f.details?.parameter_size, f.details?.quantization_level,
    f.size < 1e9 ? `${(f.size / 1e6).toFixed(0)} MB` : `${(f.size / 1e9).toFixed(1)} GB`,
    t("contextTokens").replace("{n}", (f.context_length ?? 0).toLocaleString(state.lang))].filter(Boolean).join(" · ") : "";
}

function modelLabel(m) {
  if (m.parent) return m.id.slice(m.parent.length + 1);  // the adapter's name
  const name = state.models.some((x) => x.parent === m.id) ? t("baseModel").replace("{name}", m.id) : m.id;
  const someUnloaded = state.models.some((x) => !x.parent && !x.facts);
  return someUnloaded && m.facts ? `${name} ● ${t("loaded")}` : name;
}

// Sent even when the list is hidden (one model): the stored answers then still say which
// model wrote them.
function chosenModel() {
  return $("model").value || null;
}

// Parameters
function readParams() {
  const params = {};
  for (const name of PARAM_FIELDS) {
    const value = $(name).value;
    if (value !== "") params[name] = name === "top_k" || name === "max_tokens" ? parseInt(value, 10) : parseFloat(value);
  }
  const model = chosenModel();
  if (model) params.model = model;
  return params;
}

function writeParams(params) {
  for (const name of PARAM_FIELDS) $(name).value = params[name] ?? "";
  // A model the server no longer serves (restarted without that adapter) falls back to the base.
  if (state.models.length) {
    $("model").value = state.models.some((m) => m.id === params.model) ? params.model : state.models[0].id;
    showModelFacts();
  }
  const preset = Object.entries(PRESETS).find(([, p]) => Object.keys(p).every((k) => p[k] === params[k]));
  $("preset").value = preset ? preset[0] : "custom";
}

function choosePreset() {
  const preset = PRESETS[$("preset").value];
  if (preset) writeParams({ ...readParams(), ...preset });
}

// Conversations
async function loadConversations() {
  state.conversations = (await api("/ui/conversations")).data;
  renderConversationList();
}

// For search: lower case, accents dropped ("Canción" is found by "cancion").
function folded(text) {
  return text.normalize("NFD").replace(/\p{M}/gu, "").toLowerCase();
}

function renderConversationList() {
  const list = $("conversation-list");
  list.replaceChildren();
  const query = folded($("conversation-search").value.trim());
  for (const c of state.conversations) {
    if (query && !folded(c.title || t("untitled")).includes(query)) continue;
    const item = document.createElement("li");
    item.dataset.id = c.id;
    if (state.current && state.current.id === c.id) item.classList.add("active");
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = c.title || t("untitled");
    item.append(title, iconButton("✎", t("rename"), "rename", () => renameConversation(c)),
      iconButton("✕", t("delete"), "delete", () => deleteConversation(c)));
    item.addEventListener("click", () => openConversation(c.id).catch(showError));
    list.append(item);
  }
}

function iconButton(symbol, label, className, action) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = className;
  button.textContent = symbol;
  button.title = label;
  button.setAttribute("aria-label", label);
  button.addEventListener("click", (event) => { event.stopPropagation(); Promise.resolve(action()).catch(showError); });
  return button;
}

// A button labelled with words (copy, send, cancel) rather than a glyph.
function textButton(label, className, action) {
  const button = iconButton(label, label, className, action);
  button.removeAttribute("aria-label");
  return button;
}

async function copyText(text, button) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
  } else {
    // Plain http from another machine has no clipboard API: the old way, through a selection.
    const area = Object.assign(document.createElement("textarea"), { value: text });
    area.style.cssText = "position: fixed; opacity: 0";
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = t("copied");
  setTimeout(() => { button.textContent = t("copy"); }, 1500);
}

async function openConversation(id) {
  state.current = await api(`/ui/conversations/${encodeURIComponent(id)}`);
  $("system-prompt").value = state.current.system_prompt;
  writeParams({ ...PRESETS.equilibrado, max_tokens: DEFAULT_MAX_TOKENS, ...state.current.params });
  localStorage.setItem("llamita.conversation", id);
  renderConversationList();
  renderMessages();
  renderCollections();
}

function newConversation() {
  state.current = null;
  localStorage.setItem("llamita.conversation", "");  // not removed: a fresh visit opens the latest
  $("system-prompt").value = "";
  renderConversationList();
  renderMessages();
  renderCollections();
  $("message-input").focus();
}

async function renameConversation(c) {
  const title = window.prompt(t("renamePrompt"), c.title);
  if (title === null) return;
  await api(`/ui/conversations/${encodeURIComponent(c.id)}`, "PATCH", { title });
  if (state.current && state.current.id === c.id) state.current.title = title;
  await loadConversations();
}

async function deleteConversation(c) {
  if (!window.confirm(t("deleteConfirm"))) return;
  await api(`/ui/conversations/${encodeURIComponent(c.id)}`, "DELETE");
  if (state.current && state.current.id === c.id) newConversation();
  await loadConversations();
}

// Messages
function renderMessages() {
  const box = $("messages");
  box.replaceChildren();
  for (const m of state.current ? state.current.messages : []) box.append(messageElement(m));
  box.scrollTop = box.scrollHeight;
}

function messageElement(m) {
  const el = document.createElement("div");
  el.className = `message ${m.role}`;
  if (m.id != null) el.dataset.id = m.id;
  const body = document.createElement("div");
  body.className = "body";
  const meta = document.createElement("div");
  meta.className = "meta";
  el.append(body, meta);
  if (m.role === "assistant") {
    renderAnswer(body, m.content, m.sources);
    fillMeta(el, m);
  } else {
    body.textContent = m.content;
    if (m.id != null && m.role === "user") meta.append(iconButton("✎", t("edit"), "edit", () => editMessage(el, m)));
  }
  return el;
}

// An answer's Markdown, sanitized (markdown.js), with a copy button on each code block and,
// for an answer from documents, its citations [n] linked to their sources (documents.js).
function renderAnswer(body, content, sources) {
  body.innerHTML = renderMarkdown(content);
  if (sources) linkCitations(body, sources);
  for (const pre of body.querySelectorAll("pre")) {
    const code = pre.querySelector("code") || pre;
    const button = textButton(t("copy"), "copy-code", () => copyText(code.textContent, button));
    pre.append(button);
  }
}

function fillMeta(el, m) {
  const meta = el.querySelector(".meta");
  meta.replaceChildren();
  const copy = textButton(t("copy"), "copy", () => copyText(m.content, copy));
  meta.append(copy);
  if (m.model && state.models.length > 1) {
    const model = state.models.find((x) => x.id === m.model);
    meta.append(Object.assign(document.createElement("span"),
      { className: "model", textContent: model ? modelLabel(model) : m.model }));
  }
  if (m.tokens_per_second != null) {
    const speed = document.createElement("span");
    speed.className = "speed";
    speed.textContent = `${m.tokens_per_second.toFixed(1)} ${t("tokensPerSecond")}`;
    meta.append(speed);
  }
  if (m.stopped) meta.append(Object.assign(document.createElement("span"), { textContent: t("stopped") }));
  if (m.sources) meta.append(sourcesButton(m));
  if (m.id == null) return;
  const rating = m.feedback ? m.feedback.rating : 0;
  // Geometric glyphs, not emoji: every system font has them (emoji show as boxes without an emoji font).
  for (const [value, symbol, label, cls] of [[1, "▲", t("good"), "thumb-up"], [-1, "▼", t("bad"), "thumb-down"]]) {
    const button = iconButton(symbol, label, cls, async () => {
      await api(`/ui/messages/${m.id}/feedback`, "PUT", { rating: value });
      m.feedback = { rating: value, comment: "" };
      fillMeta(el, m);
    });
    if (rating === value) button.classList.add("chosen");
    meta.append(button);
  }
  // Shown on the last answer only (style.css), and not while another one streams.
  meta.append(iconButton("↻", t("regenerate"), "regenerate", () => regenerate(m)));
}

function messagesPath() {
  return `/ui/conversations/${encodeURIComponent(state.current.id)}/messages`;
}

// Regenerate and edit-and-resend: the stored conversation loses this message and all after it,
// as the page does, so that a reload shows what is on the screen.
async function truncateAt(m) {
  await api(`${messagesPath()}/${m.id}`, "DELETE");
  state.current.messages.splice(state.current.messages.indexOf(m));
  renderMessages();
}

async function regenerate(m) {
  if (state.abort) return;
  showError(null);
  await truncateAt(m);
  await answer();
}

function editMessage(el, m) {
  if (state.abort) return;
  const area = Object.assign(document.createElement("textarea"), { className: "edit-text", value: m.content, rows: 3 });
  const resend = textButton(t("resend"), "resend", async () => {
    const text = area.value.trim();
    if (!text || state.abort) return;
    showError(null);
    await truncateAt(m);
    await send(text);
  });
  const cancel = textButton(t("cancel"), "cancel", renderMessages);
  area.addEventListener("keydown", (event) => {  // as in the composer: Enter sends, Escape gives up
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); resend.click(); }
    if (event.key === "Escape") renderMessages();
  });
  el.querySelector(".body").replaceChildren(area);
  el.querySelector(".meta").replaceChildren(resend, cancel);
  area.focus();
}

// Sending: save the user's message, stream the answer, then save the answer with its speed.
// The conversation is created by the first message; changed settings are saved before an answer.
async function saveSettings(title) {
  const system_prompt = $("system-prompt").value;
  const params = readParams();
  if (!state.current) {
    const created = await api("/ui/conversations", "POST", { title, system_prompt, params });
    state.current = { ...created, messages: [] };
    localStorage.setItem("llamita.conversation", created.id);
    keepAttachments(created.id);
  } else if (state.current.system_prompt !== system_prompt || JSON.stringify(state.current.params) !== JSON.stringify(params)) {
    await api(`/ui/conversations/${encodeURIComponent(state.current.id)}`, "PATCH", { system_prompt, params });
    Object.assign(state.current, { system_prompt, params });
  }
  return { system_prompt, params };
}

async function send(text) {
  showError(null);
  await saveSettings(text.slice(0, 60));
  const user = await api(messagesPath(), "POST", { role: "user", content: text });
  state.current.messages.push(user);
  $("messages").append(messageElement(user));
  loadConversations().catch(showError);
  await answer();
}

// An answer to the conversation as it stands (its last message is the user's).
async function answer() {
  const { system_prompt, params } = await saveSettings("");
  const reply = { role: "assistant", content: "", tokens_per_second: null, feedback: null, model: params.model ?? null };
  const el = messageElement(reply);
  el.classList.add("streaming");
  $("messages").append(el);
  const history = state.current.messages.map(({ role, content }) => ({ role, content }));
  const messages = system_prompt ? [{ role: "system", content: system_prompt }, ...history] : history;
  await streamAnswer(messages, params, reply, el);
  el.classList.remove("streaming");
  if (!reply.content) {
    el.remove();  // an error (shown above the composer) or a stop before the first token
    return;
  }
  const saved = await api(messagesPath(), "POST",
    { role: "assistant", content: reply.content, tokens_per_second: reply.tokens_per_second,
      ...(reply.model ? { model: reply.model } : {}), ...(reply.sources ? { sources: reply.sources } : {}) });
  Object.assign(reply, saved);
  state.current.messages.push(reply);
  el.dataset.id = reply.id;
  fillMeta(el, reply);
}

async function streamAnswer(messages, params, reply, el) {
  const body = el.querySelector(".body");
  state.abort = new AbortController();
  setBusy(true);
  let firstTokenAt = null;
  let chunks = 0;
  let completionTokens = null;
  try {
    const response = await request("/v1/chat/completions", {
      method: "POST", signal: state.abort.signal,
      body: JSON.stringify({ messages, stream: true, stream_options: { include_usage: true }, ...params,
        ...documentFields() }),
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) completionTokens = chunk.usage.completion_tokens;
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.sources) {  // an answer from documents: its numbered sources, at the end
            reply.sources = delta.sources;
            renderAnswer(body, reply.content, reply.sources);
          }
          if (delta && delta.content) {
            firstTokenAt = firstTokenAt ?? performance.now();
            chunks++;
            reply.content += delta.content;
            renderAnswer(body, reply.content);
            $("messages").scrollTop = $("messages").scrollHeight;
          }
        }
      }
    }
  } catch (error) {
    if (error.name === "AbortError") reply.stopped = true;
    else showError(error);
  } finally {
    state.abort = null;
    setBusy(false);
  }
  // Decode speed: tokens after the first over the time since the first arrived (prefill excluded).
  const tokens = completionTokens ?? chunks;
  const seconds = firstTokenAt === null ? 0 : (performance.now() - firstTokenAt) / 1000;
  if (tokens > 1 && seconds > 0) reply.tokens_per_second = (tokens - 1) / seconds;
}

function setBusy(busy) {
  $("messages").classList.toggle("busy", busy);
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

function init() {
  const saved = localStorage.getItem("llamita.lang");
  state.lang = saved || ((navigator.language || "en").toLowerCase().startsWith("es") ? "es" : "en");
  $("forget-key").hidden = !localStorage.getItem("llamita.apiKey");
  writeParams({ ...PRESETS.equilibrado, max_tokens: DEFAULT_MAX_TOKENS });
  applyLanguage();

  $("lang").addEventListener("click", () => {
    state.lang = state.lang === "es" ? "en" : "es";
    localStorage.setItem("llamita.lang", state.lang);
    applyLanguage();
  });
  $("preset").addEventListener("change", choosePreset);
  $("model").addEventListener("change", () => chooseModel().catch(showError));
  for (const name of PARAM_FIELDS) $(name).addEventListener("input", () => writeParams(readParams()));
  $("new-conversation").addEventListener("click", newConversation);
  $("conversation-search").addEventListener("input", renderConversationList);
  $("stop").addEventListener("click", () => state.abort && state.abort.abort());
  $("forget-key").addEventListener("click", () => { localStorage.removeItem("llamita.apiKey"); $("forget-key").hidden = true; });
  $("export").addEventListener("click", async (event) => {
    // A plain link cannot send the API key: fetch, then save the text.
    event.preventDefault();
    try {
      const text = await (await request("/ui/feedback.jsonl")).text();
      const link = Object.assign(document.createElement("a"),
        { href: URL.createObjectURL(new Blob([text], { type: "application/jsonl" })), download: "feedback.jsonl" });
      link.click();
      URL.revokeObjectURL(link.href);
    } catch (error) { showError(error); }
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("message-input").value.trim();
    if (!text || state.abort) return;
    $("message-input").value = "";
    send(text).catch((error) => { showError(error); setBusy(false); });
  });
  $("message-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("composer").requestSubmit(); }
  });

  // The models first: opening the last conversation sets its model in their list.
  loadModels().catch(showError).then(loadConversations).then(() => {
    // A fresh visit (nothing stored) opens the latest conversation; "" is a new one, chosen.
    const stored = localStorage.getItem("llamita.conversation");
    const last = stored === null && state.conversations.length ? state.conversations[0].id : stored;
    if (last && state.conversations.some((c) => c.id === last)) return openConversation(last);
  }).catch(showError);
}

document.addEventListener("DOMContentLoaded", init);
