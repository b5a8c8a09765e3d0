// textgen playground: streams /v1/completions (server-sent events) into the page, colouring
// each character by its surprisal (-log2 of the probability the model gave it), or, once the text
// is complete, by one cell's value at each character (POST /v1/trace, the model's own cell code,
// as `textgen viz` computes it). No build step, no external requests.
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

function colourBy() {
  return $("colour-by").value;
}

// One span per character (a code point), so a trace's values line up with the spans. A span keeps
// its log-probability (data-lp) and its description (data-about) for recolouring later.
// info: per character {logprob, top: {character: logprob}}, or null (not scored)
function addSpans(parent, text, info, className) {
  const fragment = document.createDocumentFragment();
  [...text].forEach((ch, i) => {
    const span = document.createElement("span");
    if (className) span.className = className;
    span.textContent = ch;
    const { logprob, top } = (info && info[i]) || {};
    if (logprob !== null && logprob !== undefined) {
      span.dataset.lp = logprob;
      const likeliest = top ? Object.entries(top).map(([c, lp]) => `${JSON.stringify(c)} ${bits(lp)}`) : [];
      span.dataset.about = `${JSON.stringify(ch)}: ${bits(logprob)} bits` +
        (likeliest.length ? `\nlikeliest: ${likeliest.join(", ")}` : "");
    }
    paintSpan(span, null);
    fragment.appendChild(span);
  });
  parent.appendChild(fragment);
}

// A value in [-1, 1] as a colour: blue below 0, white at 0, red above.
function divergingColour(t) {
  const x = Math.min(Math.max(t, -1), 1);
  return `hsl(${x < 0 ? 220 : 0} 80% ${100 - 45 * Math.abs(x)}%)`;
}

const GATES = new Set(["i", "f", "o"]);
const QUANTITY_NAMES = { c: "C", h: "h", i: "input gate", f: "forget gate", g: "candidate C\u0303", o: "output gate" };
let cellTrace = null; // the last /v1/trace answer, while it matches the text on the page

// Colours one span by the chosen quantity; `value` is its cell value (cell mode) or null.
function paintSpan(span, value) {
  const mode = colourBy();
  span.style.background = "";
  span.removeAttribute("title");
  if (mode === "surprisal" && span.dataset.lp !== undefined) {
    span.style.background = surprisalColour(parseFloat(span.dataset.lp));
    span.title = span.dataset.about;
  } else if (mode === "cell" && value !== null && value !== undefined) {
    const q = cellTrace.quantity;
    // gates live in [0, 1]: 0.5 is white; C, h and C~ are scaled by the largest |value| shown
    const t = GATES.has(q) ? 2 * value - 1 : value / (q === "c" ? Math.max(cellTrace.scale, 1e-6) : 1);
    span.style.background = divergingColour(t);
    span.title = `layer ${cellTrace.layer} unit ${cellTrace.unit} ${QUANTITY_NAMES[q]}: ${value.toFixed(3)}` +
      (span.dataset.about ? `\n${span.dataset.about}` : "");
  } else if (span.dataset.about) {
    span.title = span.dataset.about;
  }
}

function repaint() {
  const spans = $("output").querySelectorAll("span");
  const values = colourBy() === "cell" && cellTrace && cellTrace.values.length === spans.length ? cellTrace.values : null;
  spans.forEach((span, i) => paintSpan(span, values && values[i]));
  const cell = colourBy() === "cell" && values;
  $("legend").hidden = colourBy() !== "surprisal";
  $("cell-legend").hidden = !cell;
  if (cell) {
    const q = cellTrace.quantity;
    $("cell-name").textContent = `layer ${cellTrace.layer} unit ${cellTrace.unit}, ${QUANTITY_NAMES[q]}`;
    const max = GATES.has(q) ? "1 (0: white at 0.5)" : (q === "c" ? cellTrace.scale.toFixed(2) : "1");
    document.querySelectorAll("#cell-legend .cell-max").forEach((el) => { el.textContent = max; });
  }
}

function showCells(cells) {
  const list = $("cells");
  list.textContent = "";
  for (const cell of cells) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `layer ${cell.layer} unit ${cell.unit} ${cell.quantity === "c" ? "C" : "h"}`;
    button.classList.toggle("chosen", cellTrace && cell.layer === cellTrace.layer &&
      cell.unit === cellTrace.unit && cell.quantity === cellTrace.quantity);
    button.addEventListener("click", () => {
      $("cell-layer").value = cell.layer;
      $("cell-unit").value = cell.unit;
      $("cell-quantity").value = cell.quantity;
      traceOutput();
    });
    item.append(button, ` ${cell.feature}: r = ${cell.r.toFixed(2)}`);
    list.appendChild(item);
  }
}

// Asks the server for the chosen cell's values over the text on the page, then recolours it.
async function traceOutput() {
  const text = $("output").textContent;
  if (colourBy() !== "cell" || controller || !text) return;
  const body = { model: $("model").value, text, layer: parseInt($("cell-layer").value, 10) || 0,
    quantity: $("cell-quantity").value };
  const unit = $("cell-unit").value.trim();
  if (unit !== "") body.unit = parseInt(unit, 10);
  const option = $("model").selectedOptions[0];
  const most = option && parseInt(option.dataset.maxTrace, 10);
  const length = [...text].length;
  if (most && length > most) { // the server would refuse it: say so without asking
    setStatus(`Colouring by a cell traces at most ${most.toLocaleString()} characters; this text has ` +
      `${length.toLocaleString()} (generate a shorter one, or start the server with a larger --max-trace)`, true);
    return;
  }
  setStatus("tracing the text\u2026");
  try {
    const response = await fetch("/v1/trace", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error((answer.error && answer.error.message) || `HTTP ${response.status}`);
    if ($("output").textContent !== text) return; // a new generation began meanwhile
    cellTrace = answer;
    $("cell-layer").value = answer.layer;
    $("cell-unit").value = answer.unit;
    showCells(answer.cells);
    repaint();
    setStatus(`coloured by layer ${answer.layer} unit ${answer.unit}, ${QUANTITY_NAMES[answer.quantity]}`);
  } catch (error) {
    setStatus(`Error: ${error.message}`, true);
  }
}

function chooseColouring() {
  $("cell-controls").hidden = colourBy() !== "cell";
  repaint();
  if (colourBy() === "cell") traceOutput();
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
    option.dataset.maxTrace = (model.textgen && model.textgen.max_trace) || "";
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
  cellTrace = null;
  repaint();
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
  if (colourBy() === "cell") traceOutput();
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
  $("colour-by").addEventListener("change", chooseColouring);
  for (const id of ["cell-layer", "cell-unit", "cell-quantity"]) $(id).addEventListener("change", traceOutput);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); generate(); }
  });
}

bindControls();
chooseColouring();
loadModels().catch((error) => setStatus(`Error: cannot list the runs (${error.message})`, true));
