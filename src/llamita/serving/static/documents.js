// Documents: collections made by dropping files (/v1/collections/...), attached to the
// conversation so that its questions are answered from them ("collections" on the chat
// request), citations [n] that show their chunk, and the attention the answer paid to each
// source (/glass/sources, drawn by glass.js). Loaded after app.js and glass.js; uses their
// TEXT, t(), state, api(), request() and showSourceAttention(). Document text only ever
// reaches the page through textContent.
"use strict";

Object.assign(TEXT.en, {
  documents: "Documents", dropHere: "Drop files here (.txt .md .html .pdf .docx) or click to choose",
  collectionName: "Collection name (new or existing)", attach: "Answer from this collection",
  deleteCollection: "Delete this collection?", uploading: "uploading…", indexed: "{n} chunks",
  unchanged: "unchanged", skipped: "not read: {why}", noCollections: "No collections yet.",
  chunksOf: "{files} files · {chunks} chunks", sourceAttention: "Attention to the sources",
});
Object.assign(TEXT.es, {
  documents: "Documentos", dropHere: "Suelta aquí archivos (.txt .md .html .pdf .docx) o haz clic para elegir",
  collectionName: "Nombre de la colección (nueva o existente)", attach: "Responder desde esta colección",
  deleteCollection: "¿Borrar esta colección?", uploading: "subiendo…", indexed: "{n} fragmentos",
  unchanged: "sin cambios", skipped: "no se pudo leer: {why}", noCollections: "Aún no hay colecciones.",
  chunksOf: "{files} archivos · {chunks} fragmentos", sourceAttention: "Atención a las fuentes",
});

const docs = { collections: [] };

function docsFormat(key, values) {
  return t(key).replace(/\{(\w+)\}/g, (_, name) => String(values[name]));
}

// Attached collections, per conversation, in localStorage; "new" holds a conversation's
// choice until its first message creates it.
function attachmentKey(id) {
  return `llamita.collections:${id ?? "new"}`;
}

function attached() {
  const names = JSON.parse(localStorage.getItem(attachmentKey(state.current?.id)) || "[]");
  return names.filter((n) => docs.collections.some((c) => c.name === n));
}

function setAttached(names) {
  localStorage.setItem(attachmentKey(state.current?.id), JSON.stringify(names));
}

function keepAttachments(id) {
  const pending = localStorage.getItem(attachmentKey(null));
  if (pending) localStorage.setItem(attachmentKey(id), pending);
  localStorage.removeItem(attachmentKey(null));
}

// What a chat request adds to answer from the attached collections (nothing without any).
function documentFields() {
  const names = attached();
  return names.length ? { collections: names } : {};
}

async function loadCollections() {
  docs.collections = (await api("/v1/collections")).data;
  renderCollections();
}

function renderCollections() {
  const list = $("collection-list");
  if (!list) return;
  const chosen = attached();
  list.replaceChildren();
  if (!docs.collections.length) {
    list.append(Object.assign(document.createElement("li"), { className: "empty", textContent: t("noCollections") }));
  }
  for (const c of docs.collections) {
    const item = document.createElement("li");
    item.dataset.name = c.name;
    const box = Object.assign(document.createElement("input"), { type: "checkbox", checked: chosen.includes(c.name),
      title: t("attach") });
    box.setAttribute("aria-label", `${t("attach")}: ${c.name}`);
    box.addEventListener("change", () => {
      const names = attached().filter((n) => n !== c.name);
      setAttached(box.checked ? [...names, c.name] : names);
    });
    const label = Object.assign(document.createElement("span"), { className: "name", textContent: c.name,
      title: docsFormat("chunksOf", { files: c.n_files, chunks: c.n_chunks }) });
    const count = Object.assign(document.createElement("small"),
      { textContent: docsFormat("chunksOf", { files: c.n_files, chunks: c.n_chunks }) });
    item.append(box, label, count, iconButton("✕", t("delete"), "delete", () => deleteCollection(c.name)));
    list.append(item);
  }
}

async function deleteCollection(name) {
  if (!window.confirm(`${t("deleteCollection")} (${name})`)) return;
  await api(`/v1/collections/${encodeURIComponent(name)}`, "DELETE");
  await loadCollections();
}

// A collection name from the name box, or from the first file's name ("Notas de clase.pdf" ->
// "Notas_de_clase"), within the server's rule: 1-64 letters, digits, _ - . from a letter or digit.
function collectionName(files) {
  const typed = $("collection-name").value.trim();
  const base = typed || files[0].name.replace(/\.[^.]*$/, "");
  const name = base.normalize("NFD").replace(/\p{M}/gu, "").replace(/[^A-Za-z0-9_.-]+/g, "_")
    .replace(/^[^A-Za-z0-9]+/, "").slice(0, 64);
  return name || "documents";
}

// Each file in its own request, so each shows its own progress and error.
async function addFiles(files) {
  if (!files.length) return;
  showError(null);
  const name = collectionName(files);
  const path = `/v1/collections/${encodeURIComponent(name)}`;
  if (!docs.collections.some((c) => c.name === name)) await api("/v1/collections", "POST", { name });
  const status = $("upload-status");
  status.replaceChildren();
  for (const file of files) {
    const line = Object.assign(document.createElement("li"), { textContent: `${file.name}: ${t("uploading")}` });
    line.dataset.file = file.name;
    status.append(line);
    try {
      const form = new FormData();
      form.append("files", file, file.name);
      const report = await (await request(`${path}/files`, { method: "POST", body: form })).json();
      const skipped = report.skipped.find((s) => s.file === file.name);
      line.classList.toggle("failed", Boolean(skipped));
      line.textContent = `${file.name}: ${skipped ? docsFormat("skipped", { why: skipped.reason })
        : report.unchanged.length ? t("unchanged") : docsFormat("indexed", { n: report.chunks })}`;
    } catch (error) {
      line.classList.add("failed");
      line.textContent = `${file.name}: ${error.message || error}`;
    }
  }
  if (!attached().includes(name)) setAttached([...attached(), name]);
  await loadCollections();
}

// Citations: each [n] (or [n, m]) in an answer becomes links to its sources, outside code.
const CITATION = /\[(\d+(?:\s*[,;]\s*\d+)*)\]/g;

function linkCitations(body, sources) {
  const walker = document.createTreeWalker(body, NodeFilter.SHOW_TEXT);
  const nodes = [];
  while (walker.nextNode()) if (!walker.currentNode.parentElement.closest("code, pre, a")) nodes.push(walker.currentNode);
  for (const node of nodes) {
    const text = node.textContent;
    if (!CITATION.test(text)) continue;
    CITATION.lastIndex = 0;
    const parts = [];
    let at = 0;
    for (const match of text.matchAll(CITATION)) {
      parts.push(document.createTextNode(text.slice(at, match.index)));
      const numbers = match[1].split(/\s*[,;]\s*/).map(Number);
      parts.push(document.createTextNode("["));
      numbers.forEach((n, k) => {
        if (k) parts.push(document.createTextNode(", "));
        const source = sources.find((s) => s.index === n);
        parts.push(source ? citationLink(n, source) : document.createTextNode(String(n)));
      });
      parts.push(document.createTextNode("]"));
      at = match.index + match[0].length;
    }
    parts.push(document.createTextNode(text.slice(at)));
    node.replaceWith(...parts);
  }
}

function sourceLabel(source) {
  return source.location ? `${source.source}, ${source.location}` : source.source;
}

function citationLink(n, source) {
  const link = Object.assign(document.createElement("a"), { href: "#", className: "cite", textContent: String(n) });
  link.dataset.source = n;
  link.title = sourceLabel(source);
  link.addEventListener("mouseenter", () => showChunk(link, source));
  link.addEventListener("focus", () => showChunk(link, source));
  link.addEventListener("click", (event) => { event.preventDefault(); showChunk(link, source, true); });
  return link;
}

// One popup for all citations: the source's file and place, then its chunk.
function showChunk(link, source, pinned = false) {
  const popup = $("cite-popup");
  const title = Object.assign(document.createElement("strong"), { textContent: `[${source.index}] ${sourceLabel(source)}` });
  const text = Object.assign(document.createElement("p"), { textContent: source.text });
  popup.replaceChildren(title, text);
  popup.hidden = false;
  popup.dataset.pinned = pinned ? "1" : "";
  const box = link.getBoundingClientRect();
  popup.style.left = `${Math.max(8, Math.min(box.left, window.innerWidth - popup.offsetWidth - 8))}px`;
  // Above the citation when there is room (the answer's buttons are below it), else below.
  const above = box.top - popup.offsetHeight - 4;
  popup.style.top = `${above >= 8 ? above : Math.min(box.bottom + 4, window.innerHeight - popup.offsetHeight - 8)}px`;
}

function hideChunk(event) {
  const popup = $("cite-popup");
  if (popup.hidden || popup.contains(event.target) || event.target.classList?.contains("cite")) return;
  if (event.type === "mouseover" && popup.dataset.pinned) return;
  popup.hidden = true;
}

// The answer's attention to its sources, in the "Inside the model" panel (glass.js draws it).
// The chat request is rebuilt as app.js's answer() sent it: the system prompt and every
// message before this answer.
function sourcesButton(m) {
  return iconButton("◎", t("sourceAttention"), "source-attention", async () => {
    $("glass").open = true;
    const before = state.current.messages.slice(0, state.current.messages.indexOf(m)).map(({ role, content }) => ({ role, content }));
    const system = state.current.system_prompt;
    const messages = system ? [{ role: "system", content: system }, ...before] : before;
    const view = await api("/glass/sources", "POST", { messages, sources: m.sources, answer: m.content, ...glassModel() });
    showSourceAttention(view, m.sources);
  });
}

function documentsInit() {
  const zone = $("drop-zone");
  const input = $("file-input");
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") input.click(); });
  input.addEventListener("change", () => { addFiles([...input.files]).catch(showError); input.value = ""; });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    addFiles([...event.dataTransfer.files]).catch(showError);
  });
  document.addEventListener("mouseover", hideChunk);
  document.addEventListener("click", hideChunk);
  $("lang").addEventListener("click", renderCollections);
  loadCollections().catch(showError);
}

document.addEventListener("DOMContentLoaded", documentsInit);
