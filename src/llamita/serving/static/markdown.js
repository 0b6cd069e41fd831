// A small, safe Markdown renderer for model answers. The text is HTML-escaped first; only the
// tags written below are ever produced, so model output can never inject markup or script.
"use strict";

function escapeHtml(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

const KEYWORDS = new Set(("def class return if elif else for while in import from as with try except finally " +
  "raise lambda yield async await pass break continue and or not is None True False function const let var " +
  "new this null undefined true false switch case fn pub struct impl use mut match int void char static").split(" "));

// Light highlighting of escaped code: strings, comments, numbers, keywords.
function highlight(escaped) {
  // Entities are matched whole (and kept) so that no rule below splits one apart.
  const token = /(&quot;.*?&quot;|&#39;.*?&#39;|&#?\w+;|(?:#|\/\/)[^\n]*|\b\d+(?:\.\d+)?\b|\b[A-Za-z_]\w*\b)/g;
  return escaped.replace(token, (t) => {
    if (t.startsWith("&") && !t.startsWith("&quot;") && !t.startsWith("&#39;")) return t;
    if (t.length > 6 && (t.startsWith("&quot;") || t.startsWith("&#39;"))) return `<span class="tok-str">${t}</span>`;
    if (t.startsWith("#") || t.startsWith("//")) return `<span class="tok-com">${t}</span>`;
    if (/^\d/.test(t)) return `<span class="tok-num">${t}</span>`;
    return KEYWORDS.has(t) ? `<span class="tok-kw">${t}</span>` : t;
  });
}

function emphasis(s) {
  s = s.replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>").replace(/__([^_\n]+)__/g, "<strong>$1</strong>");
  return s.replace(/(^|[^*\w])\*([^*\n]+)\*(?!\*)/g, "$1<em>$2</em>").replace(/(^|\W)_([^_\n]+)_(?!\w)/g, "$1<em>$2</em>");
}

function inline(escaped) {
  // Code spans and whole links are set aside as \u0000n\u0000 before the emphasis rules run,
  // so that `*` and `_` never reach into code or a link's attributes (target="_blank",
  // an address with _ or ** in it). renderMarkdown removes NULs from the model's text.
  const held = [];
  const hold = (html) => { held.push(html); return `\u0000${held.length - 1}\u0000`; };
  const restore = (s) => s.replace(/\u0000(\d+)\u0000/g, (_, i) => held[Number(i)]);
  let s = escaped.replace(/`([^`\n]+)`/g, (_, c) => hold(`<code>${c}</code>`));
  s = s.replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)\u0000]+)\)/g, (_, label, url) =>
    hold(`<a href="${url}" target="_blank" rel="noopener noreferrer">${restore(emphasis(label))}</a>`));
  return restore(emphasis(s));
}

// Markdown text -> HTML string built only from escaped text and the tags above.
function renderMarkdown(text) {
  const lines = escapeHtml(text.replace(/\u0000/g, "\ufffd")).split("\n"); // NUL: inline's marker
  const out = [];
  let paragraph = [];
  let list = null; // {tag, items}
  const flushParagraph = () => {
    if (paragraph.length) out.push(`<p>${inline(paragraph.join("<br>"))}</p>`);
    paragraph = [];
  };
  const flushList = () => {
    if (list) out.push(`<${list.tag}>${list.items.map((i) => `<li>${inline(i)}</li>`).join("")}</${list.tag}>`);
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(/^\s*```\s*([\w+#.-]*)\s*$/);
    if (fence) {
      flushParagraph(); flushList();
      const code = [];
      for (i++; i < lines.length && !/^\s*```\s*$/.test(lines[i]); i++) code.push(lines[i]);
      const lang = fence[1] ? ` class="language-${fence[1]}"` : "";
      out.push(`<pre><code${lang}>${highlight(code.join("\n"))}</code></pre>`);
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    const bullet = line.match(/^\s*[-*+]\s+(.*)$/);
    const numbered = line.match(/^\s*\d+[.)]\s+(.*)$/);
    if (heading) {
      flushParagraph(); flushList();
      const level = Math.min(heading[1].length + 2, 6); // h3..h6: answers sit below the page title
      out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
    } else if (bullet || numbered) {
      flushParagraph();
      const tag = bullet ? "ul" : "ol";
      if (list && list.tag !== tag) flushList();
      if (!list) list = { tag, items: [] };
      list.items.push((bullet || numbered)[1]);
    } else if (line.trim() === "") {
      flushParagraph(); flushList();
    } else {
      flushList();
      paragraph.push(line);
    }
  }
  flushParagraph(); flushList();
  return out.join("");
}

if (typeof module !== "undefined") module.exports = { renderMarkdown, escapeHtml };
