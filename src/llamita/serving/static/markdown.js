// Model answers as safe HTML: Markdown (GFM: tables, blockquotes, nested lists, code) parsed by
// the vendored `marked`, then sanitized by the vendored DOMPurify. Model text never becomes
// markup: raw HTML in an answer is shown as text, links go only to http(s) addresses, and the
// sanitizer's allow-list below is a second wall behind the renderer.
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

const WEB_ADDRESS = /^https?:\/\//i;

// Only what these renderers and marked's defaults write passes; everything else is dropped.
const SANITIZE = {
  ALLOWED_TAGS: ["p", "br", "strong", "em", "del", "code", "pre", "span", "a", "ul", "ol", "li", "h3", "h4", "h5",
    "h6", "blockquote", "hr", "table", "thead", "tbody", "tr", "th", "td"],
  ALLOWED_ATTR: ["href", "title", "class", "align", "start"],
  ALLOWED_URI_REGEXP: /^https?:\/\//i,
};

let markdown = null; // {marked, purify}: built on first use, once the vendored scripts are loaded

function markdownTools() {
  if (markdown) return markdown;
  const marked = new window.marked.Marked({ gfm: true, breaks: true });
  marked.use({
    renderer: {
      // Raw HTML, block or inline, is text the model wrote: show it, never run it.
      html({ text }) { return escapeHtml(text); },
      // h3..h6: answers sit below the page's own headings.
      heading({ tokens, depth }) {
        const level = Math.min(depth + 2, 6);
        return `<h${level}>${this.parser.parseInline(tokens)}</h${level}>`;
      },
      code({ text, lang }) {
        const name = /^[\w+#.-]+$/.test(lang || "") ? ` class="language-${lang}"` : "";
        return `<pre><code${name}>${highlight(escapeHtml(text.replace(/\n$/, "")))}</code></pre>`;
      },
      // The address as written (quotes and all, escaped); anything but http(s) stays text.
      link({ href, tokens, raw }) {
        if (!WEB_ADDRESS.test(href)) return escapeHtml(raw);
        return `<a href="${escapeHtml(href)}">${this.parser.parseInline(tokens)}</a>`;
      },
      // No remote images (they would load from the model's choice of server): a link instead.
      image({ href, text, raw }) {
        if (!WEB_ADDRESS.test(href)) return escapeHtml(raw);
        return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
      },
      checkbox({ checked }) { return checked ? "☑ " : "☐ "; },
    },
  });
  const purify = window.DOMPurify(window); // our own instance: its hook below touches nothing else
  purify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });
  markdown = { marked, purify };
  return markdown;
}

// Markdown text -> sanitized HTML string.
function renderMarkdown(text) {
  const { marked, purify } = markdownTools();
  return purify.sanitize(marked.parse(text), SANITIZE);
}
