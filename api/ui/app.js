// mmrag's web UI: search (text or a dropped/pasted image), a page viewer with the evidence drawn over the page, and
// questions answered as they stream, citations opening the viewer at their regions. Plain JavaScript, no build step;
// every call goes to the same /v1 API a client would use, with the API key (when keys are on) kept in the browser.
"use strict";

const PAGE = 24; // hits per request; more come as the grid scrolls to its end
const KEY = "mmrag-api-key";
const NOT_ANSWERED = "The indexed pages do not answer this.";
const $ = (id) => document.getElementById(id);

const state = { query: null, image: null, offset: 0, done: false, loading: false, urls: [] };
// What the viewer shows: a page of a document (its id, number and name) and its image's URL.
const viewing = { documentId: null, pageNumber: 0, name: "", imageUrl: "", pages: null };

// --- the API ---------------------------------------------------------------------------------------------------

function headers(extra = {}) {
  const key = localStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// An error response as a plain sentence; 401/403 also bring up the key prompt.
async function problem(response) {
  let detail = "";
  try {
    const body = await response.json(); // {"error": {"type", "message"}}, the API's one error shape
    detail = body.error?.message || "";
  } catch (_) { /* not JSON: a proxy's page */ }
  const say = {
    401: "This server needs an API key. Enter yours above.",
    403: "Your API key may not do that.",
    404: "Not found",
    413: "That file is too large for this server.",
    415: "That kind of file cannot be searched or indexed.",
    422: "The request was not understood",
    503: "The server is not ready: a model it needs is not loaded.",
  }[response.status] || `The server answered ${response.status}`;
  if (response.status === 401 || response.status === 403) $("key-form").hidden = false;
  if ((response.status === 422 || response.status === 404) && detail) return `${say}: ${detail}`;
  return say + (detail && response.status >= 500 ? ` (${detail})` : "");
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

// The filters panel as the API's `collections` and `filters`; a metadata entry without "=" is refused in a sentence.
function searchScope() {
  const filters = {};
  const kind = $("filter-kind").value;
  if (kind) filters.kind = kind;
  const metadata = {};
  for (const pair of $("filter-metadata").value.split(",").map((p) => p.trim()).filter(Boolean)) {
    const at = pair.indexOf("=");
    if (at < 1) throw new Error(`Metadata filters are key=value pairs; "${pair}" is not one.`);
    metadata[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
  }
  if (Object.keys(metadata).length) filters.metadata = metadata;
  if ($("filter-from").value) filters.date_from = $("filter-from").value;
  if ($("filter-to").value) filters.date_to = $("filter-to").value;
  const tags = $("filter-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
  if (tags.length) filters.tags = tags;
  const collection = $("filter-collection").value.trim();
  return { filters, collections: collection ? [collection] : null };
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
  let answered = false;
  try {
    let response;
    const { filters, collections } = searchScope();
    if (state.image) {
      const form = new FormData();
      form.append("image", state.image);
      form.append("k", String(PAGE));
      form.append("offset", String(state.offset));
      form.append("filters", JSON.stringify(filters));
      if (collections) form.append("collections", collections[0]);
      response = await call("/v1/search", { method: "POST", body: form });
    } else {
      const body = { query: state.query, k: PAGE, offset: state.offset, filters };
      if (collections) body.collections = collections;
      response = await call("/v1/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
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
    answered = hits.length > 0;
  } catch (error) {
    $("search-status").textContent = "";
    notify(error.message);
  } finally {
    state.loading = false;
  }
  // a grid shorter than the window leaves its end in view, which the observer saw already: ask again (after a
  // request that worked only: a failing one is not repeated)
  if (answered && !state.done && $("more").getBoundingClientRect().top < window.innerHeight) search(false);
}

function showHit(hit) {
  const { name, label } = describe(hit);
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.title = scoresTitle(hit);
  const img = document.createElement("img");
  // a described page's caption is its alt text (what a screen reader says of the thumbnail), after its name
  img.alt = hit.caption ? `${label}: ${hit.caption}` : label;
  img.loading = "lazy";
  const caption = document.createElement("span");
  caption.className = "name";
  caption.textContent = hit.page_number > 1 || name.toLowerCase().endsWith(".pdf") ? `${name} · p. ${hit.page_number}` : name;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `score ${hit.score.toFixed(4)}`;
  button.append(img, caption, score);
  if (hit.tags && hit.tags.length) {
    // a photo's zero-shot tags, best first; the title says each one's share
    const tags = document.createElement("span");
    tags.className = "tags";
    tags.textContent = hit.tags.map((t) => t.name).join(" · ");
    tags.title = hit.tags.map((t) => `${t.name} ${t.score.toFixed(2)}`).join(", ");
    button.append(tags);
  }
  button.addEventListener("click", () => openViewer(hit, hit.highlights, []));
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

// Opens the viewer on a page of a hit, a citation or a document's page list (anything with document_id,
// page_number, name or path, and image_url), drawing the given regions over it.
async function openViewer(page, highlights, cited) {
  const { name, label } = describe(page);
  if (viewing.documentId !== page.document_id) viewing.pages = null;
  Object.assign(viewing, { documentId: page.document_id, pageNumber: page.page_number, name, imageUrl: page.image_url });
  const imageUrl = page.image_url;
  $("viewer-title").textContent = label;
  $("viewer-image").alt = `${label}, with ${cited.length ? "the cited region" : "the matches"} marked`;
  $("viewer-boxes").replaceChildren();
  drawBoxes(highlights, "highlight");
  drawBoxes(cited, "cited");
  const counts = `${highlights.length} highlight${highlights.length === 1 ? "" : "s"}` +
    (cited.length ? `, ${cited.length} cited region${cited.length === 1 ? "" : "s"}` : "");
  $("viewer-caption").textContent = counts;
  if (!$("viewer").open) $("viewer").showModal();
  showNeighbours();
  await authImage($("viewer-image"), imageUrl);
  (cited.length ? $("viewer-boxes").querySelector(".cited") : null)?.scrollIntoView({ block: "center" });
}

// The document's pages, fetched once per document, for previous/next.
async function documentPages() {
  if (viewing.pages === null && viewing.documentId !== null) {
    try {
      viewing.pages = (await (await call(`/v1/documents/${viewing.documentId}`)).json()).pages;
    } catch (error) {
      notify(error.message);
      viewing.pages = [];
    }
  }
  return viewing.pages || [];
}

async function showNeighbours() {
  const pages = await documentPages();
  $("viewer-previous").disabled = !pages.some((p) => p.page_number === viewing.pageNumber - 1);
  $("viewer-next").disabled = !pages.some((p) => p.page_number === viewing.pageNumber + 1);
}

async function turnPage(step) {
  const pages = await documentPages();
  const target = pages.find((p) => p.page_number === viewing.pageNumber + step);
  if (!target) return;
  openViewer({ document_id: viewing.documentId, page_number: target.page_number, name: viewing.name,
               image_url: target.image_url }, [], []);
}

// The document's original file, as it was indexed (the API refuses one changed since), saved under its name.
async function originalFile() {
  try {
    const blob = await (await call(`/v1/documents/${viewing.documentId}/file`)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = viewing.name;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  } catch (error) {
    notify(error.message);
  }
}

// "Similar": search by the page's own image.
async function similar() {
  try {
    const blob = await (await call(viewing.imageUrl)).blob();
    $("viewer").close();
    show("search");
    searchImage(new File([blob], `${viewing.name} p. ${viewing.pageNumber}`, { type: blob.type || "image/jpeg" }));
  } catch (error) {
    notify(error.message);
  }
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
        else if (event === "error") notify(data.error?.message || "The answer failed.");
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
    button.addEventListener("click", () => openViewer(citation, [], citation.regions));
    const quote = document.createElement("q");
    quote.textContent = citation.quote;
    item.append(button, " ", quote);
    $("citations").append(item);
  });
}

// --- library: uploads and documents ---------------------------------------------------------------------------

const DOCUMENTS = 20; // documents per page of the list
const library = { offset: 0, total: 0 };

function documentName(doc) {
  return doc.metadata?.filename || (doc.paths[0] || "").split("/").pop() || `document ${doc.id}`;
}

async function listDocuments() {
  try {
    const response = await call(`/v1/documents?limit=${DOCUMENTS}&offset=${library.offset}`);
    const listing = await response.json();
    library.total = listing.total;
    const rows = listing.items.map((doc) => {
      const row = document.createElement("tr");
      const cells = [documentName(doc), doc.kind, doc.page_count ?? "", doc.status + (doc.error ? `: ${doc.error}` : "")];
      for (const value of cells) {
        const cell = document.createElement("td");
        cell.textContent = String(value);
        row.append(cell);
      }
      const action = document.createElement("td");
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Delete";
      remove.setAttribute("aria-label", `Delete ${documentName(doc)}`);
      remove.addEventListener("click", () => deleteDocument(doc));
      action.append(remove);
      row.append(action);
      return row;
    });
    document.querySelector("#documents tbody").replaceChildren(...rows);
    const last = Math.min(library.offset + listing.items.length, listing.total);
    $("documents-caption").textContent = listing.total
      ? `Documents ${library.offset + 1}–${last} of ${listing.total}` : "No documents yet.";
    $("documents-previous").disabled = library.offset === 0;
    $("documents-next").disabled = last >= listing.total;
  } catch (error) {
    notify(error.message);
  }
}

async function deleteDocument(doc) {
  if (!confirm(`Delete ${documentName(doc)} and its pages? This cannot be undone.`)) return;
  try {
    await call(`/v1/documents/${doc.id}`, { method: "DELETE" });
    notify(`Deleted ${documentName(doc)}.`);
    await listDocuments();
  } catch (error) {
    notify(error.message);
  }
}

// The upload goes through XMLHttpRequest, the one browser API that reports upload progress; then the job's counts
// drive the bar until it is done or failed.
function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("files", file);
  const request = new XMLHttpRequest();
  request.open("POST", "/v1/documents");
  for (const [name, value] of Object.entries(headers())) request.setRequestHeader(name, value);
  $("upload-progress").hidden = false;
  $("job-failures").replaceChildren();
  $("job-bar").value = 0;
  $("job-status").textContent = `Uploading ${files.length} file${files.length === 1 ? "" : "s"}…`;
  request.upload.onprogress = (event) => {
    if (event.lengthComputable) $("job-bar").value = 0.5 * (event.loaded / event.total);
  };
  request.onload = async () => {
    const response = new Response(request.responseText, { status: request.status });
    if (request.status !== 202) {
      $("upload-progress").hidden = true;
      notify(await problem(response));
      return;
    }
    notify("");
    watchJob((await response.json()).job_id, files.length);
  };
  request.onerror = () => notify("The upload did not reach the server.");
  request.send(form);
}

async function watchJob(jobId, files) {
  for (;;) {
    let job;
    try {
      job = await (await call(`/v1/jobs/${jobId}`)).json();
    } catch (error) {
      notify(error.message);
      return;
    }
    const counts = job.counts;
    const finished = ["indexed", "unchanged", "duplicate", "failed"].reduce((sum, key) => sum + (counts[key] || 0), 0);
    $("job-bar").value = 0.5 + 0.5 * Math.min(1, finished / Math.max(1, files));
    $("job-status").textContent = `${job.state}: ${counts.indexed || 0} indexed, ${counts.failed || 0} failed` +
      (counts.duplicate ? `, ${counts.duplicate} already there` : "") + ` of ${files}`;
    if (job.state === "done" || job.state === "failed") {
      $("job-failures").replaceChildren(...job.failures.map((failure) => {
        const item = document.createElement("li");
        item.textContent = `${failure.path.split("/").pop()}: ${failure.reason}`;
        return item;
      }));
      if (job.error) notify(job.error);
      await listDocuments();
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

// --- wiring ----------------------------------------------------------------------------------------------------

function show(view) {
  for (const button of document.querySelectorAll("nav button")) {
    button.setAttribute("aria-pressed", String(button.dataset.view === view));
  }
  $("search-view").hidden = view !== "search";
  $("ask-view").hidden = view !== "ask";
  $("library-view").hidden = view !== "library";
  if (view === "library") listDocuments();
  ({ search: $("query"), ask: $("question"), library: $("files") })[view].focus();
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
  $("viewer-previous").addEventListener("click", () => turnPage(-1));
  $("viewer-next").addEventListener("click", () => turnPage(1));
  $("viewer-similar").addEventListener("click", similar);
  $("viewer-original").addEventListener("click", originalFile);
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    upload([...$("files").files]);
  });
  const drop = $("upload-form");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("dropping"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("dropping"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dropping");
    upload([...event.dataTransfer.files]);
  });
  $("documents-previous").addEventListener("click", () => {
    library.offset = Math.max(0, library.offset - DOCUMENTS);
    listDocuments();
  });
  $("documents-next").addEventListener("click", () => {
    library.offset += DOCUMENTS;
    listDocuments();
  });
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
  // more results when the end of the grid comes into view (a marker after it)
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && state.offset > 0) search(false);
  }).observe($("more"));
  $("query").focus();
});
