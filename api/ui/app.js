// mmrag's web UI: search (text or a dropped/pasted image), a page viewer with the evidence drawn over the page, and
// questions answered as they stream, citations opening the viewer at their regions. Plain JavaScript, no build step;
// every call goes to the same /v1 API a client would use, with the API key (when keys are on) kept in the browser.
"use strict";

const PAGE = 24; // hits per request; more come as the grid scrolls to its end
const KEY = "mmrag-api-key";
const NOT_ANSWERED = "The indexed pages do not answer this.";
const $ = (id) => document.getElementById(id);

const state = { query: null, image: null, offset: 0, done: false, loading: false, urls: [] };

// --- the API ---------------------------------------------------------------------------------------------------

function headers(extra = {}) {
  const key = localStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// An error response as a plain sentence; 401/403 also bring up the key prompt.
async function problem(response) {
  let detail = "";
  try { detail = (await response.json()).detail || ""; } catch (_) { /* not JSON */ }
  if (typeof detail === "object") detail = detail.message || JSON.stringify(detail);
  const say = {
    401: "This server needs an API key. Enter yours above.",
    403: "Your API key may not do that.",
    413: "That file is too large for this server.",
    415: "That kind of file cannot be searched or indexed.",
    422: "The request was not understood",
    503: "The server is not ready: a model it needs is not loaded.",
  }[response.status] || `The server answered ${response.status}`;
  if (response.status === 401 || response.status === 403) $("key-form").hidden = false;
  return response.status === 422 && detail ? `${say}: ${detail}` : say + (detail && response.status >= 500 ? ` (${detail})` : "");
}

function notify(message) {
  $("notice").textContent = message;
  $("notice").hidden = !message;
}

async function call(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (!response.ok) throw new Error(await problem(response));
  return response;
}

// Page images need the key too, so they are fetched and shown from blob URLs (freed when a new search begins).
async function authImage(img, url) {
  try {
    const blob = await (await call(url)).blob();
    const objectUrl = URL.createObjectURL(blob);
    state.urls.push(objectUrl);
    img.src = objectUrl;
  } catch (error) {
    img.alt = `${img.alt} (not loaded: ${error.message})`;
  }
}

// --- search ----------------------------------------------------------------------------------------------------

function describe(hit) {
  const name = hit.name || hit.path.split("/").pop();
  return { name, label: `${name}, page ${hit.page_number}` };
}

function scoresTitle(hit) {
  const each = Object.entries(hit.scores).map(([name, score]) => `${name} ${score.toFixed(3)}`).join(", ");
  return `fused ${hit.score.toFixed(4)}${each ? ` (${each})` : ""}`;
}

async function search(fresh) {
  if (state.loading || (!fresh && state.done)) return;
  if (fresh) {
    state.urls.forEach((url) => URL.revokeObjectURL(url));
    Object.assign(state, { offset: 0, done: false, urls: [] });
    $("results").replaceChildren();
  }
  state.loading = true;
  $("search-status").textContent = "Searching…";
  const began = performance.now();
  try {
    let response;
    if (state.image) {
      const form = new FormData();
      form.append("image", state.image);
      form.append("k", String(PAGE));
      form.append("offset", String(state.offset));
      response = await call("/v1/search", { method: "POST", body: form });
    } else {
      response = await call("/v1/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ query: state.query, k: PAGE, offset: state.offset }),
      });
    }
    const hits = (await response.json()).hits;
    hits.forEach(showHit);
    state.offset += hits.length;
    state.done = hits.length < PAGE;
    const total = $("results").children.length;
    $("search-status").textContent = total ? `${total} results` : "Nothing found.";
    document.body.dataset.searchMs = String(Math.round(performance.now() - began));
    notify("");
  } catch (error) {
    $("search-status").textContent = "";
    notify(error.message);
  } finally {
    state.loading = false;
  }
}

function showHit(hit) {
  const { name, label } = describe(hit);
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.title = scoresTitle(hit);
  const img = document.createElement("img");
  img.alt = label;
  img.loading = "lazy";
  const caption = document.createElement("span");
  caption.className = "name";
  caption.textContent = hit.page_number > 1 || name.toLowerCase().endsWith(".pdf") ? `${name} · p. ${hit.page_number}` : name;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `score ${hit.score.toFixed(4)}`;
  button.append(img, caption, score);
  button.addEventListener("click", () => openViewer(hit.image_url, label, hit.highlights, []));
  item.append(button);
  $("results").append(item);
  authImage(img, hit.thumbnail_url);
}

// --- the page viewer -------------------------------------------------------------------------------------------

function drawBoxes(regions, className) {
  for (const region of regions) {
    const [x0, y0, x1, y1] = region.box;
    const box = document.createElement("div");
    box.className = `box ${className} ${region.source}`;
    Object.assign(box.style, {
      left: `${x0 * 100}%`, top: `${y0 * 100}%`, width: `${(x1 - x0) * 100}%`, height: `${(y1 - y0) * 100}%`,
    });
    box.title = region.text ? `${region.text} (${region.source})` : region.source;
    $("viewer-boxes").append(box);
  }
}

async function openViewer(imageUrl, label, highlights, cited) {
  $("viewer-title").textContent = label;
  $("viewer-image").alt = `${label}, with ${cited.length ? "the cited region" : "the matches"} marked`;
  $("viewer-boxes").replaceChildren();
  drawBoxes(highlights, "highlight");
  drawBoxes(cited, "cited");
  const counts = `${highlights.length} highlight${highlights.length === 1 ? "" : "s"}` +
    (cited.length ? `, ${cited.length} cited region${cited.length === 1 ? "" : "s"}` : "");
  $("viewer-caption").textContent = counts;
  if (!$("viewer").open) $("viewer").showModal();
  await authImage($("viewer-image"), imageUrl);
  (cited.length ? $("viewer-boxes").querySelector(".cited") : null)?.scrollIntoView({ block: "center" });
}

// --- ask -------------------------------------------------------------------------------------------------------

async function ask(question) {
  const answer = $("answer");
  answer.textContent = "";
  answer.className = "";
  $("citations").replaceChildren();
  try {
    const response = await call("/v1/ask", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ question, stream: true }),
    });
    notify("");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += value;
      let end;
      while ((end = buffered.indexOf("\n\n")) >= 0) {
        const frame = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        const event = /^event: (.*)$/m.exec(frame)?.[1];
        const data = JSON.parse(/^data: (.*)$/m.exec(frame)?.[1] || "null");
        if (event === "token") answer.textContent += data.text;
        else if (event === "answer") showAnswer(data);
        else if (event === "error") notify(data.detail?.message || data.detail || "The answer failed.");
      }
    }
  } catch (error) {
    notify(error.message);
  }
}

function showAnswer(data) {
  const answer = $("answer");
  answer.textContent = data.answer;
  if (!data.supported) {
    answer.className = "unsupported";
    answer.textContent = data.answer || NOT_ANSWERED;
    return;
  }
  data.citations.forEach((citation, index) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    const { label } = describe(citation);
    button.textContent = `[${index + 1}] ${label}`;
    button.addEventListener("click", () => openViewer(citation.image_url, label, [], citation.regions));
    const quote = document.createElement("q");
    quote.textContent = citation.quote;
    item.append(button, " ", quote);
    $("citations").append(item);
  });
}

// --- wiring ----------------------------------------------------------------------------------------------------

function show(view) {
  for (const button of document.querySelectorAll("nav button")) {
    button.setAttribute("aria-pressed", String(button.dataset.view === view));
  }
  $("search-view").hidden = view !== "search";
  $("ask-view").hidden = view !== "ask";
  (view === "search" ? $("query") : $("question")).focus();
}

function searchImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    notify("Drop or paste an image to search by image.");
    return;
  }
  Object.assign(state, { image: file, query: null });
  $("query").value = "";
  $("query").placeholder = `Searching by image: ${file.name || "pasted image"}`;
  search(true);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => show(b.dataset.view)));
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = $("query").value.trim();
    if (!query) return;
    Object.assign(state, { query, image: null });
    search(true);
  });
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const question = $("question").value.trim();
    if (question) ask(question);
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(KEY, $("key").value.trim());
    $("key-form").hidden = true;
    notify("Key saved in this browser.");
  });
  $("viewer-close").addEventListener("click", () => $("viewer").close());
  const view = $("search-view");
  view.addEventListener("dragover", (event) => { event.preventDefault(); view.classList.add("dropping"); });
  view.addEventListener("dragleave", () => view.classList.remove("dropping"));
  view.addEventListener("drop", (event) => {
    event.preventDefault();
    view.classList.remove("dropping");
    searchImage(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])][0];
    if (file && !$("search-view").hidden) searchImage(file);
  });
  // more results when the end of the grid comes into view
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && state.offset > 0) search(false);
  }).observe($("search-status"));
  $("query").focus();
});
