// textgen playground: streams /v1/completions (server-sent events) into the page, colouring
// each character by its surprisal (-log2 of the probability the model gave it). No build step,
// no external requests.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_BITS = 8; // surprisal at which the colour scale saturates
let controller = null; // AbortController of the running request

function surprisalColour(logprob) {
  const bits = -logprob / Math.LN2;
  const t = Math.min(Math.max(bits / MAX_BITS, 0), 1);
  return `hsl(${60 - 60 * t} 100% ${97 - 47 * t}%)`;
}

// Text waiting to be drawn: pieces are added to the page once per animation frame, so a fast
// stream never forces a layout per piece (which made long texts crawl).
let pending = [];
let frameRequested = false;

function appendText(parent, text, info, className) {
  pending.push([parent, text, info, className]);
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(flush);
  }
}

function flush() {
  frameRequested = false;
  if (!pending.length) return;
  const parent = pending[0][0];
  // follow the text while the reader is at the bottom of the box
  const following = parent.scrollHeight - parent.scrollTop - parent.clientHeight < 40;
  for (const [target, text, info, className] of pending) addSpans(target, text, info, className);
  pending = [];
  if (following) parent.scrollTop = parent.scrollHeight;
}

function bits(logprob) {
  return (-logprob / Math.LN2).toFixed(2);
}

// info: per character {logprob, top: {character: logprob}}, or null (no colouring)
function addSpans(parent, text, info, className) {
  const colour = $("colour").checked && info;
  if (!colour) {
    const span = document.createElement("span");
    if (className) span.className = className;
    span.textContent = text;
    parent.appendChild(span);
    return;
  }
  const fragment = document.createDocumentFragment();
  [...text].forEach((ch, i) => {
    const span = document.createElement("span");
    if (className) span.className = className;
    span.textContent = ch;
    const { logprob, top } = info[i] || {};
    if (logprob !== null && logprob !== undefined) {
      span.style.background = surprisalColour(logprob);
      const likeliest = top ? Object.entries(top).map(([c, lp]) => `${JSON.stringify(c)} ${bits(lp)}`) : [];
      span.title = `${JSON.stringify(ch)}: ${bits(logprob)} bits` +
        (likeliest.length ? `\nlikeliest: ${likeliest.join(", ")}` : "");
    }
    fragment.appendChild(span);
  });
  parent.appendChild(fragment);
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

function setRunning(running) {
  $("generate").disabled = running;
  $("stop").disabled = !running;
  $("output").classList.toggle("running", running);
}

async function loadModels() {
  const response = await fetch("/v1/models");
  const body = await response.json();
  const select = $("model");
  for (const model of body.data) {
    const option = document.createElement("option");
    option.value = model.id;
    option.textContent = model.id;
    option.dataset.info = describe(model.textgen || {});
    select.appendChild(option);
  }
  showModelInfo();
}

function describe(info) {
  if (!info.units) return "";
  const bpc = info.best_val_bpc == null ? "" : `, best ${info.best_val_bpc.toFixed(3)} bpc`;
  return `${info.layers} \u00d7 ${info.units} LSTM, ${info.vocab_size} characters, ` +
    `${info.steps.toLocaleString()} steps${bpc}`;
}

function showModelInfo() {
  const option = $("model").selectedOptions[0];
  $("model-info").textContent = option ? option.dataset.info : "";
}

function requestBody() {
  const body = {
    model: $("model").value,
    prompt: $("prompt").value,
    max_tokens: Math.max(1, parseInt($("length").value, 10) || 1),
    temperature: parseFloat($("temperature").value),
    top_p: parseFloat($("top-p").value),
    top_k: Math.max(0, parseInt($("top-k").value, 10) || 0),
    stream: true,
    echo: true,
    logprobs: 3, // each character's log-probability, and the 3 likeliest alternatives
  };
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = parseInt(seed, 10);
  return body;
}

// Reads server-sent events from a fetch() body; calls onData(payload string) per event.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data && onData(data) === false) return;
    }
  }
}

async function generate() {
  if (controller) return;
  const output = $("output");
  pending = [];
  output.textContent = "";
  const body = requestBody();
  controller = new AbortController();
  setRunning(true);
  setStatus("waiting for the first characters\u2026");
  const started = performance.now();
  let generated = 0;
  let promptLeft = [...body.prompt].length; // echoed characters still to come
  let reason = null;
  try {
    const response = await fetch("/v1/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error((error.error && error.error.message) || `HTTP ${response.status}`);
    }
    await readEvents(response, (data) => {
      if (data === "[DONE]") return false;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices) {
        // characters are code points, as on the server (a JS string's length counts UTF-16 units)
        let chars = [...choice.text];
        const scores = choice.logprobs;
        let info = scores ? scores.token_logprobs.map((logprob, i) =>
          ({ logprob, top: scores.top_logprobs && scores.top_logprobs[i] })) : null;
        if (promptLeft > 0 && chars.length) {
          const n = Math.min(promptLeft, chars.length);
          appendText(output, chars.slice(0, n).join(""), info && info.slice(0, n), "prompt");
          promptLeft -= n;
          chars = chars.slice(n);
          info = info && info.slice(n);
        }
        if (chars.length) {
          appendText(output, chars.join(""), info);
          generated += chars.length;
        }
        if (choice.finish_reason) reason = choice.finish_reason;
      }
      const seconds = (performance.now() - started) / 1000;
      setStatus(`${generated.toLocaleString()} characters, ${(generated / seconds).toFixed(0)} characters/s`);
      return true;
    });
    const seconds = (performance.now() - started) / 1000;
    setStatus(`${generated.toLocaleString()} characters in ${seconds.toFixed(2)} s` +
      (reason ? ` (finished: ${reason})` : ""));
  } catch (error) {
    if (error.name === "AbortError") {
      setStatus(`stopped after ${generated.toLocaleString()} characters`);
    } else {
      setStatus(`Error: ${error.message}`, true);
    }
  } finally {
    flush();
    controller = null;
    setRunning(false);
  }
}

function bindControls() {
  for (const [input, out, digits] of [["temperature", "temperature-value", 2], ["top-p", "top-p-value", 2]]) {
    const update = () => { $(out).textContent = parseFloat($(input).value).toFixed(digits); };
    $(input).addEventListener("input", update);
    update();
  }
  $("controls").addEventListener("submit", (event) => { event.preventDefault(); generate(); });
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
  $("model").addEventListener("change", showModelInfo);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); generate(); }
  });
}

bindControls();
loadModels().catch((error) => setStatus(`Error: cannot list the runs (${error.message})`, true));
