// The review page: every text from a post or a model is put into the page with textContent, never as HTML.
"use strict";

const taskSelect = document.getElementById("task");
const postsBox = document.getElementById("posts");
const keyBox = document.getElementById("api-key");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
let tasks = {};

function headers() {
  const h = { "Content-Type": "application/json" };
  if (keyBox.value) h["Authorization"] = "Bearer " + keyBox.value;
  return h;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

async function loadTasks() {
  const response = await fetch("/v1/tasks", { headers: headers() });
  if (!response.ok) { statusLine.textContent = "tasks: HTTP " + response.status; return; }
  const body = await response.json();
  taskSelect.replaceChildren();
  for (const task of body.tasks) {
    tasks[task.name] = task;
    taskSelect.append(element("option", null, task.name));
  }
}

// The post with the evidence spans (character offsets into the post as the model saw it) marked.
function highlighted(text, evidence) {
  const box = element("div", "post");
  const chars = Array.from(text);  // offsets count characters, as Python does
  // Marked only where the post shown here has the quote at those offsets (a redacted post may not).
  const spans = (evidence || []).filter(e => e.grounded && e.start !== null && e.end !== null
    && chars.slice(e.start, e.end).join("") === e.quote).sort((a, b) => a.start - b.start);
  let at = 0;
  for (const span of spans) {
    if (span.start < at) continue;  // overlapping quotes: the first wins
    box.append(document.createTextNode(chars.slice(at, span.start).join("")));
    box.append(element("mark", null, chars.slice(span.start, span.end).join("")));
    at = span.end;
  }
  box.append(document.createTextNode(chars.slice(at).join("")));
  return box;
}

function probabilityLine(prediction, task) {
  if (!prediction.probabilities) return null;
  const policy = task && task.policy;
  const risk = policy && policy.risk_label ? policy.risk_label : Object.keys(prediction.probabilities)[0];
  let text = "P(" + risk + ") = " + Number(prediction.probabilities[risk]).toFixed(3);
  if (policy && policy.review_band) text += " · review band " + policy.review_band.join("–");
  if (policy && policy.threshold !== null && policy.threshold !== undefined)
    text += " · threshold " + Number(policy.threshold).toFixed(3);
  return element("div", "probability", text);
}

function show(text, prediction) {
  const task = tasks[prediction.task];
  const card = element("article", "result" + (prediction.needs_review ? " review" : "")
    + (prediction.decision === "block" ? " block" : ""));
  const head = element("div");
  head.append(element("span", "label", prediction.labels.length ? prediction.labels.join("、") : "(no label)"));
  if (prediction.needs_review) head.append(element("span", "flag", "needs review"));
  if (prediction.decision) head.append(element("span", "decision", "decision: " + prediction.decision));
  if (!prediction.valid) head.append(element("span", "error", " invalid answer: " + (prediction.problem || "")));
  card.append(head);
  const probability = probabilityLine(prediction, task);
  if (probability) card.append(probability);
  card.append(highlighted(text, prediction.evidence));
  card.append(element("p", "explanation", prediction.explanation));
  results.append(card);
}

document.getElementById("analyze-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const texts = postsBox.value.split("\n").map(t => t.trim()).filter(t => t.length > 0);
  results.replaceChildren();
  if (!texts.length) { statusLine.textContent = "paste at least one post"; return; }
  statusLine.textContent = "analysing " + texts.length + " post(s)…";
  const posts = texts.map((text, i) => ({ id: String(i + 1), text }));
  try {
    const response = await fetch("/v1/analyze", {
      method: "POST", headers: headers(), body: JSON.stringify({ task: taskSelect.value, posts }),
    });
    const body = await response.json();
    if (!response.ok) {
      statusLine.textContent = "";
      results.append(element("p", "error", (body.error && body.error.message) || ("HTTP " + response.status)));
      return;
    }
    statusLine.textContent = body.predictions.length + " analysed";
    body.predictions.forEach((prediction, i) => show(posts[i].text, prediction));
  } catch (error) {
    statusLine.textContent = "";
    results.append(element("p", "error", String(error)));
  }
});

keyBox.addEventListener("change", loadTasks);
loadTasks();
