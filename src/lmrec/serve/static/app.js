// The lmrec demo page. Loaded from /static/app.js (no inline script or handler anywhere), so the
// page runs under a Content-Security-Policy of script-src 'self'.
"use strict";

const $ = (id) => document.getElementById(id);
const OFFERED = 8; // users offered as buttons on load (the datalist holds more)
let similarity = "genre"; // the first item similarity the run supports (from /health)
let modelName = "the model";
let keysRequired = true; // until /page/config says otherwise
let latest = 0; // only the newest request's answer is shown
const added = new Set(); // items added from this page, marked "new" where they are recommended

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(`${response.status}: ${data && data.detail ? data.detail : response.statusText}`);
  return data;
}

function say(message, ok) {
  $("status").textContent = message;
  $("status").className = ok ? "ok" : "";
}

function span(cls, text) {
  const el = document.createElement("span");
  el.className = cls;
  el.textContent = text;
  return el;
}

function entry(text, meta, cls) {
  const li = document.createElement("li");
  li.textContent = text + " ";
  li.appendChild(span("meta " + (cls || ""), meta));
  return li;
}

// One recommended item: title (and a "new" badge), then year · genres · [id] score, then the reason.
function recommended(it, user) {
  const li = document.createElement("li");
  li.appendChild(document.createTextNode(it.title));
  if (added.has(it.item)) {
    li.classList.add("new");
    li.appendChild(span("badge", "new"));
  }
  const facts = [];
  if (it.year !== null && it.year !== undefined) facts.push(String(it.year));
  if (it.genres && it.genres.length) facts.push(it.genres.join(", "));
  facts.push(`[${it.item}] ${it.score.toFixed(3)}`);
  li.appendChild(document.createTextNode(" "));
  li.appendChild(span("facts", facts.join(" · ")));
  if (it.because) li.appendChild(span("why", it.because));
  li.dataset.item = it.item;
  li.dataset.year = it.year === null || it.year === undefined ? "" : String(it.year);
  li.dataset.genres = JSON.stringify(it.genres || []);
  li.dataset.cited = JSON.stringify(it.cited || []);
  li.title = "send a click on " + it.item;
  li.addEventListener("click", () => click(user, it.item, it.title));
  return li;
}

// Diversity d in [0, 1] is MMR's λ = 1 − d; 0 sends no re-ranking at all.
function lam() {
  const d = parseInt($("diversity").value, 10) / 100;
  return d > 0 ? Math.round((1 - d) * 100) / 100 : null;
}

function showLam() {
  const l = lam();
  $("lam").textContent = l === null ? "off (model order)" : `MMR λ = ${l.toFixed(2)}`;
}

function markChosen(user) {
  for (const b of $("pick").querySelectorAll("button")) b.classList.toggle("chosen", b.dataset.user === user);
}

async function refresh() {
  const user = $("user").value.trim();
  if (!user) return;
  markChosen(user);
  const k = parseInt($("k").value, 10) || 10;
  const body = { user, k, explain: true };
  const l = lam();
  if (l !== null) body.rerank = { method: "mmr", lam: l, similarity };
  const mine = ++latest;
  try {
    const [recs, hist] = await Promise.all([
      api("POST", "/recommend", body),
      api("GET", `/users/${encodeURIComponent(user)}/history?limit=30`).catch(() => null),
    ]);
    if (mine !== latest) return;
    $("recs").replaceChildren(...recs.items.map((it) => recommended(it, user)));
    $("history").replaceChildren(...(hist ? hist.items : []).reverse().map((it) => {
      const li = entry(it.title, `[${it.item}] ${it.source === "feedback" ? it.type : ""}`, it.source);
      li.dataset.item = it.item;
      return li;
    }));
    $("hlen").textContent = hist ? `(${hist.length}, newest first)` : "";
    $("reranked").textContent = recs.rerank ? `re-ranked: MMR λ ${recs.rerank.lam}, ${recs.rerank.similarity} similarity` : "";
    $("recs").dataset.request = JSON.stringify(body);
    $("recs").dataset.rendered = String(mine);
    $("info").textContent = `${recs.model} · version ${recs.version}`;
  } catch (err) {
    if (mine === latest) say(err.message);
  }
}

async function click(user, item, title) {
  try {
    await api("POST", "/feedback", { user, item, type: "click" });
    say(`sent a click on ${title}`, true);
    await refresh();
  } catch (err) {
    say(err.message);
  }
}

function pickUser(user) {
  $("user").value = user;
  say("");
  refresh();
}

// Users to pick from, as soon as the page can ask: at once without keys, else once a key is entered.
async function loadUsers() {
  const pick = $("pick");
  if (keysRequired && !$("key").value.trim()) {
    pick.replaceChildren("Users: ", span("meta", "enter an API key (read scope) to see some"));
    pick.dataset.state = "need-key";
    return;
  }
  try {
    const data = await api("GET", "/users?limit=50");
    $("users").replaceChildren(...data.users.map((u) => Object.assign(document.createElement("option"), { value: u })));
    const buttons = data.users.slice(0, OFFERED).map((u) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = u;
      b.dataset.user = u;
      b.addEventListener("click", () => pickUser(u));
      return b;
    });
    pick.replaceChildren(`Pick one of ${data.total} users: `, ...buttons);
    markChosen($("user").value.trim());
    pick.dataset.state = "ready";
  } catch (err) {
    pick.replaceChildren("Users: ", span("meta", err.message));
    pick.dataset.state = "error";
  }
}

function slug(text) {
  const s = text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40);
  return "new-" + (s || "item");
}

// PUT the item, then show where the model ranks it for the chosen user (out of 100 at most).
async function addItem(event) {
  event.preventDefault();
  const note = $("added");
  const title = $("new-title").value.trim();
  if (!title) return;
  const item = $("new-id").value.trim() || slug(title);
  const genres = $("new-genres").value.split(/[,|]/).map((g) => g.trim()).filter((g) => g);
  const body = { item, title, genres };
  const year = parseInt($("new-year").value, 10);
  if (Number.isFinite(year)) body.year = year;
  note.className = "";
  note.dataset.state = "adding";
  try {
    await api("PUT", "/items", [body]);
    added.add(item);
    const info = await api("GET", `/items/${encodeURIComponent(item)}`);
    note.dataset.item = item;
    note.dataset.recommendable = String(info.recommendable);
    const user = $("user").value.trim();
    let text = `Added “${title}” as ${item}. `;
    if (!info.recommendable) {
      text += `${modelName} cannot score it until the next training.`;
    } else if (!user) {
      text += `${modelName} scores it from its text: pick a user to see it recommended.`;
    } else {
      await refresh();
      const ranked = await api("POST", "/recommend", { user, k: 100 });
      const rank = ranked.items.findIndex((it) => it.item === item) + 1;
      note.dataset.rank = String(rank);
      text += rank
        ? `${modelName} scores it from its text: #${rank} for ${user}.`
        : `${modelName} scores it from its text, but not in ${user}'s top 100.`;
    }
    note.textContent = text;
    note.className = "ok";
    note.dataset.state = "done";
  } catch (err) {
    note.textContent = err.message;
    note.dataset.state = "error";
  }
}

function start() {
  $("key").value = localStorage.getItem("lmrec-key") || "";
  $("key").addEventListener("change", () => {
    localStorage.setItem("lmrec-key", $("key").value);
    loadUsers();
  });
  $("query").addEventListener("submit", (event) => {
    event.preventDefault();
    say("");
    localStorage.setItem("lmrec-key", $("key").value);
    refresh();
  });
  $("diversity").addEventListener("input", showLam);
  $("diversity").addEventListener("change", () => { showLam(); refresh(); });
  $("add").addEventListener("submit", addItem);
  api("GET", "/health").then((h) => {
    modelName = h.model;
    $("info").textContent = `${h.model} · version ${h.version} · ${h.users} users, ${h.items} items`;
    if (h.similarities && h.similarities.length) similarity = h.similarities[0];
  }).catch((err) => say(err.message));
  api("GET", "/page/config")
    .then((c) => { keysRequired = c.keys; })
    .catch(() => {})
    .then(loadUsers);
}

start();
