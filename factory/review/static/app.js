// The review app: filter records, read one in full, accept, reject or edit it. Plain JS, no network
// beyond this server. Record text is only ever set with textContent, never parsed as HTML.
"use strict";

const state = { list: [], index: -1, detail: null, editing: false };
const $ = (sel) => document.querySelector(sel);

// el("div.card.text", {title: "x"}, "child text", otherNode): an element; strings become text nodes.
function el(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag || "div");
  if (classes.length) node.className = classes.join(" ");
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node)) { children.unshift(attrs); attrs = null; }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  return { status: response.status, body };
}

function fmt(x, digits = 3) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }
function badge(text, cls) { return el("span.badge" + (cls ? "." + cls : ""), text); }

// ---- filters and list ---------------------------------------------------------------------------

const FACETS = ["principle", "outcome", "reason", "fact", "decision"];

async function loadRun() {
  const { body } = await api("/api/run");
  $("#run").textContent = body.run;
  $("#runinfo").textContent = `${body.status} · ${body.models.join(", ")} · ${body.constitution} · ${body.records} records`;
  const d = body.facets.decision;
  $("#counts").textContent = `accepted ${d.accepted || 0} · edited ${d.edited || 0} · rejected ${d.rejected || 0}`;
  const form = $("#filters");
  for (const name of FACETS) {
    const select = form.elements[name];
    const current = select.value;
    select.replaceChildren(el("option", { value: "" }, "any"));
    for (const [value, n] of Object.entries(body.facets[name])) {
      if (name === "fact" && !n) continue;
      select.append(el("option", { value }, `${value.replaceAll("_", " ")} (${n})`));
    }
    select.value = current;
  }
}

function query() {
  const params = new URLSearchParams();
  for (const [k, v] of new FormData($("#filters"))) if (v !== "") params.set(k, v);
  return params.toString();
}

async function loadList() {
  const { status, body } = await api("/api/records?" + query());
  if (status !== 200) { $("#total").textContent = body; return; }
  state.list = body.records;
  $("#total").textContent = `${body.total} record${body.total === 1 ? "" : "s"}` +
    (body.total > body.records.length ? ` (first ${body.records.length} shown)` : "");
  const open = state.detail?.summary.id;
  $("#list").replaceChildren(...state.list.map((s, i) => listItem(s, i)));
  state.index = state.list.findIndex((s) => s.id === open);
  markCurrent();
}

function listItem(s, i) {
  const decision = s.decision !== "none" ? badge(s.decision, s.decision) : null;
  return el("li", { "data-id": s.id, onclick: () => openAt(i) },
    el("span.p", s.prompt),
    el("span.meta", decision, badge(s.outcome.replace(":", " at "), s.status),
      s.margin !== null ? el("span", `margin ${fmt(s.margin, 2)}`) : null,
      el("span.pr", { title: s.principles.join(", ") }, s.principles.join(", "))));
}

function markCurrent() {
  for (const li of document.querySelectorAll("#list li")) {
    li.classList.toggle("current", li.dataset.id === state.detail?.summary.id);
  }
  document.querySelector("#list li.current")?.scrollIntoView({ block: "nearest" });
}

// ---- one record ---------------------------------------------------------------------------------

async function openAt(i) {
  if (i < 0 || i >= state.list.length) return;
  state.index = i;
  await openRecord(state.list[i].id);
}

async function openRecord(id, notice) {
  const { status, body } = await api("/api/records/" + encodeURIComponent(id));
  if (status !== 200) { $("#detail").replaceChildren(el("p.notice.error", String(body))); return; }
  state.detail = body;
  state.editing = false;
  history.replaceState(null, "", "#" + id);
  render(notice);
  $("#detail").scrollTop = 0;
  markCurrent();
}

function render(notice) {
  const { summary, record, target, decision } = state.detail;
  const text = decision.edited_answer ?? target;
  const earlier = [...(record.system ? [{ role: "system", content: record.system }] : []), ...(record.history || [])];
  const parts = [toolbar(summary, decision, notice), el("h2", earlier.length ? "Dialogue" : "Prompt"),
    ...earlier.map((t) => el("div.card.text.turn", { "data-role": t.role }, el("span.muted", t.role + ": "), t.content)),
    el("div.card.text.prompt", record.prompt)];
  if (target !== null || decision.edited_answer !== null) {
    parts.push(el("h2", decision.edited_answer !== null ? "Final answer (edited by a reviewer)" : "Final answer (what export trains on)"));
    parts.push(state.editing ? editor(text) : el("div.card.text.target" + (decision.edited_answer !== null ? ".edited" : ""), text));
    if (decision.edited_answer !== null && target !== null && !state.editing) {
      parts.push(el("details", el("summary.muted", "the model's answer, and the edit as a diff"),
        el("div.card.text", target), el("div.card.text", diff(target, decision.edited_answer))));
    }
  }
  if (record.dropped) parts.push(el("p.notice.error", `Dropped at ${record.dropped.stage}: ${record.dropped.reason} ${record.dropped.detail || ""}`));
  parts.push(...candidates(record), ...judgement(record), ...facts(record), ...idk(record));
  $("#detail").replaceChildren(...parts);
  if (state.editing) { const t = $("#detail textarea"); t.focus(); t.setSelectionRange(t.value.length, t.value.length); }
}

function toolbar(summary, decision, notice) {
  const on = (v) => (decision.decision === v ? ".on" : "");
  const reason = summary.reason ? ` (${summary.reason})` : "";
  return el("div.bar",
    el("span.rid", summary.id),
    badge(summary.outcome.replace(":", " at ") + reason, summary.status),
    decision.label ? badge(decision.label, decision.label) : badge("not reviewed"),
    el("span.spacer"),
    el("button.accept" + on("accepted"), { title: "a", onclick: () => decide("accepted") }, "Accept (a)"),
    el("button.reject" + on("rejected"), { title: "r", onclick: () => decide("rejected") }, "Reject (r)"),
    el("button", { title: "e", onclick: startEdit }, "Edit (e)"),
    decision.decision !== "none" ? el("button", { onclick: () => decide("none") }, "Undecide") : null,
    el("input", { name: "note", placeholder: "note", value: decision.note, onchange: (e) => saveNote(e.target.value) }),
    el("button", { title: "k", onclick: () => openAt(state.index - 1) }, "◀ Prev"),
    el("button", { title: "j", onclick: () => openAt(state.index + 1) }, "Next ▶"),
    el("div.notice" + (notice?.error ? ".error" : ""), { role: "status" }, notice?.text || ""));
}

function diff(before, after) {
  // client side only for the edit view; the server sends the revision diffs
  const a = before.match(/\S+|\s+/g) || [], b = after.match(/\S+|\s+/g) || [];
  const n = a.length, m = b.length;
  if (n * m > 4e6) return el("span", after);
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) {
    lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  }
  const ops = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { ops.push(["=", a[i]]); i++; j++; }
    else if (j < m && (i === n || lcs[i][j + 1] >= lcs[i + 1][j])) { ops.push(["+", b[j]]); j++; }
    else { ops.push(["-", a[i]]); i++; }
  }
  return diffNodes(ops);
}

function diffNodes(ops) {
  const span = el("span");
  for (const [op, text] of ops) span.append(op === "=" ? document.createTextNode(text) : el(op === "-" ? "del" : "ins", text));
  return span;
}

function candidates(record) {
  const out = [];
  if (!record.candidates.length) return out;
  out.push(el("h2", "Answers, critiques and revisions"));
  for (const c of record.candidates) {
    const card = el("div.card.candidate", el("h3", `Candidate ${c.index}`, c.finish_reason === "length" ? badge("cut at max_tokens") : null),
      el("div.label", "initial answer"), el("div.text", c.answer));
    c.rounds.forEach((r, n) => {
      card.append(el("div.label", `critique ${n + 1} · ${r.principle_id}`), el("div.text.critique", r.critique),
        el("div.label", `revision ${n + 1}${r.noop ? " · no change" : ""}${r.gate ? ` · set aside by the ${r.gate} gate, no pair` : ""} (word diff against the text it revised)`),
        el("div.text.diff", diffNodes(r.diff)));
    });
    if (c.rounds.length > 1) card.append(el("div.label", "initial → final"), el("div.text.diff", diffNodes(c.final_diff)));
    out.push(card);
  }
  return out;
}

function optionName(j, i) {
  const o = j.options[i];
  return `#${i} cand ${o.candidate} ${o.kind}`;
}

function judgement(record) {
  const j = record.judgement;
  if (!j) return [];
  const out = [el("h2", `Judge · ${j.judge_model} · ${j.method}`)];
  const opts = el("table", el("tr", el("th", "option"), el("th", "score"), el("th", "text")));
  j.options.forEach((o, i) => opts.append(el("tr", el("td.opt", optionName(j, i)), el("td.num", fmt(j.scores[i])),
    el("td.text", o.text.length > 220 ? o.text.slice(0, 220) + "…" : o.text))));
  out.push(el("div.card", opts));
  if (j.comparisons.length) {
    const t = el("table", el("tr", el("th", "pair"), el("th", "principle"), el("th", "by"), el("th", "verdicts, both orders"),
      el("th", "P(first better)"), el("th", "consistent")));
    for (const c of j.comparisons) {
      const verdicts = el("td");
      for (const v of c.verdicts) {
        verdicts.append(el("div.verdict", `(A) #${v.a}, (B) #${v.b} → P(A) ${fmt(v.p_a)} · ${v.source}` +
          (v.reply ? ` · replied “${v.reply.slice(0, 60)}”` : "")));
      }
      t.append(el("tr", el("td", el("span.opt", optionName(j, c.i)), " vs ", el("span.opt", optionName(j, c.j))), el("td", c.principle_id), el("td", c.by), verdicts,
        el("td.num", fmt(c.p_i)), el("td", c.consistent === null ? "–" : c.consistent ? "yes" : "no")));
    }
    out.push(el("div.card", t));
  }
  const pairs = el("table", el("tr", el("th", "chosen"), el("th", "rejected"), el("th", "P(chosen)"), el("th", "margin"),
    el("th", "consistent"), el("th", "judge")));
  for (const p of j.pairs) {
    pairs.append(el("tr", el("td.chosen.opt", optionName(j, p.chosen)), el("td.opt", optionName(j, p.rejected)), el("td.num", fmt(p.p_chosen)),
      el("td.num", fmt(2 * p.p_chosen - 1)), el("td", p.consistent === null ? "–" : p.consistent ? "yes" : "no"), el("td", p.judge_model)));
  }
  out.push(el("div.label", "preference pairs"), el("div.card", j.pairs.length ? pairs : el("span.muted", "no pair (tie, one option or unreadable verdicts)")));
  return out;
}

function facts(record) {
  const f = record.facts;
  if (!f || !f.checks.length) return [];
  const out = [el("h2", `Fact check (F1@${f.k})`)];
  for (const check of f.checks) {
    const card = el("div.card", el("h3", `Candidate ${check.candidate} · ${check.kind}`,
      el("span.muted", ` precision ${fmt(check.precision, 2)} · recall ${fmt(check.recall, 2)} · F1 ${fmt(check.f1, 2)}`)));
    if (!check.claims.length) card.append(el("div.muted", "no claims"));
    for (const claim of check.claims) {
      const verdict = claim.verdict || "unreadable";
      const ev = el("details", el("summary", `evidence (${claim.evidence.length}) · queries: ${claim.queries.join(" | ")}`),
        ...claim.evidence.map((e) => el("div.evidence" + (e.cited ? ".cited" : ""),
          el("div", el("b", `[${e.n}] ${e.title}`), e.cited ? " · cited" : ""), el("div.src", e.source), el("div.text", e.text))),
        claim.reply ? el("div.muted", "verdict reply: " + claim.reply) : null);
      card.append(el("div.claim", badge(verdict.replace("_", " "), verdict), " ", claim.text, ev));
    }
    out.push(card);
  }
  return out;
}

function idk(record) {
  const k = record.idk;
  if (!k) return [];
  return [el("h2", "I don't know"), el("div.card",
    el("div", `label ${k.label} · P(IK) ${fmt(k.p_ik, 2)} · references: ${k.references.join("; ")}`),
    ...k.samples.map((s) => el("div", `candidate ${s.candidate}: ${s.correct ? "correct" : "wrong"} (${s.by})`)))];
}

// ---- decisions ----------------------------------------------------------------------------------

// Saves run one after another, each based on the version the one before left (a note saved on blur
// and a click on Accept must not conflict with each other).
let saving = Promise.resolve();
function save(change, okText) {
  const detail = state.detail;  // the record shown now, even if another is open when this save runs
  const run = () => saveNow(detail, change, okText);
  saving = saving.then(run, run);
  return saving;
}

async function saveNow(detail, change, okText) {
  const d = detail.decision;
  const payload = { version: d.version, decision: d.decision, edited_answer: d.edited_answer, note: d.note, ...change };
  const { status, body } = await api(`/api/records/${encodeURIComponent(detail.summary.id)}/decision`,
    { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
  const shown = state.detail === detail;
  let notice;
  if (status === 409) {
    detail.decision = body.decision;
    notice = { error: true, text: "Not saved: this record was changed in another tab since you opened it. Its current state is shown; decide again." };
  } else if (status !== 200) {
    if (shown) render({ error: true, text: "Not saved: " + (typeof body === "string" ? body : JSON.stringify(body)) });
    return;
  } else {
    detail.decision = body.decision;
    notice = { text: okText };
  }
  if (shown) { state.editing = false; render(notice); }
  const i = state.list.findIndex((s) => s.id === detail.summary.id);
  if (i >= 0) {
    state.list[i].decision = detail.decision.label || "none";
    document.querySelector(`#list li[data-id="${CSS.escape(detail.summary.id)}"]`)?.replaceWith(listItem(state.list[i], i));
    markCurrent();
  }
  loadRun();
}

function decide(decision) { return save({ decision }, { accepted: "Accepted.", rejected: "Rejected.", none: "Decision cleared." }[decision]); }
function saveNote(note) { return save({ note }, "Note saved."); }

function startEdit() {
  if (!state.detail || state.detail.target === null) return;  // nothing of this record is exported
  state.editing = true;
  render();
}

function editor(text) {
  const area = el("textarea", { "aria-label": "edited answer" });
  area.value = text;
  const hasEdit = state.detail.decision.edited_answer !== null;
  return el("div.editor", area, el("div.row",
    el("button.accept", { onclick: saveEdit }, "Save edit (ctrl+enter)"),
    el("button", { onclick: () => { state.editing = false; render(); } }, "Cancel (esc)"),
    hasEdit ? el("button", { onclick: () => save({ edited_answer: null }, "Edit removed: the model's answer is back.") }, "Revert to the model's answer") : null,
    el("span.hint", "The edited text replaces the model's final answer in the exported datasets.")));
}

function saveEdit() {
  const text = $("#detail textarea").value;
  if (!text.trim()) { render({ error: true, text: "An empty answer cannot be saved; reject the record instead." }); return; }
  return save({ edited_answer: text }, "Edit saved.");
}

// ---- keyboard -----------------------------------------------------------------------------------

document.addEventListener("keydown", (e) => {
  const target = e.target instanceof Element ? e.target : document.body;
  const typing = target.closest("textarea, input, select");
  if (target.matches("textarea")) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); saveEdit(); }
    else if (e.key === "Escape") { state.editing = false; render(); }
    return;
  }
  if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
  const actions = {
    j: () => openAt(state.index + 1), n: () => openAt(state.index + 1),
    k: () => openAt(state.index - 1), p: () => openAt(state.index - 1),
    a: () => state.detail && decide("accepted"), r: () => state.detail && decide("rejected"), e: startEdit,
  };
  if (actions[e.key]) { e.preventDefault(); actions[e.key](); }
});

// ---- start --------------------------------------------------------------------------------------

let typingTimer = null;
$("#filters").addEventListener("change", () => loadList());
$("#filters").addEventListener("input", (e) => {
  if (e.target.matches("input")) { clearTimeout(typingTimer); typingTimer = setTimeout(loadList, 250); }
});
$("#filters").addEventListener("reset", () => setTimeout(loadList, 0));

(async () => {
  await loadRun();
  await loadList();
  const id = decodeURIComponent(location.hash.slice(1));
  if (id) await openRecord(id);
  document.body.dataset.ready = "1";
})();
