// textgen playground: streams /v1/completions (server-sent events) into the page, colouring
// each character by its surprisal (-log2 of the probability the model gave it), or, once the text
// is complete, by one cell's value at each character (POST /v1/trace, the model's own cell code,
// as `textgen viz` computes it). The colour scales, the hover card and the font hint are textgen's
// shared renderer (TextgenRender, /assets/render.js), the same as the viz page's. No build step, no
// external requests.
"use strict";

const $ = (id) => document.getElementById(id);
const R = TextgenRender;
let controller = null; // AbortController of the running request
let spans = []; // one span per character on the page, in order (the trace's values line up with them)

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
  return -logprob / Math.LN2;
}

function colourBy() {
  return $("colour-by").value;
}

// One span per character (a code point), so a trace's values line up with the spans. A span keeps
// its log-probability (`lp`) and the likeliest characters at its place (`top`, {character:
// logprob}) for recolouring and for the hover card.
// info: per character {logprob, top: {character: logprob}}, or null (not scored)
function addSpans(parent, text, info, className) {
  const fragment = document.createDocumentFragment();
  [...text].forEach((ch, i) => {
    const span = document.createElement("span");
    if (className) span.className = className;
    span.textContent = ch;
    const { logprob, top } = (info && info[i]) || {};
    if (logprob !== null && logprob !== undefined) span.lp = logprob;
    span.top = top || null;
    span.index = spans.length;
    spans.push(span);
    paintSpan(span, null);
    fragment.appendChild(span);
  });
  parent.appendChild(fragment);
}

// the LSTM's quantities; a served run names its cell's own (/v1/models: textgen.quantities)
const LSTM_QUANTITIES = { c: "cell", h: "hidden", i: "input gate", f: "forget gate", g: "candidate", o: "output gate" };
const SYMBOLS = { gru: { g: "h\u0303" } }; // where a cell's symbol differs from the LSTM's

// {quantity: name} of the chosen run's cell, in its order
function modelQuantities() {
  const option = $("model").selectedOptions[0];
  return option && option.dataset.quantities ? JSON.parse(option.dataset.quantities) : LSTM_QUANTITIES;
}

function modelCell() {
  const option = $("model").selectedOptions[0];
  return (option && option.dataset.cell) || "lstm";
}

function quantityName(q) {
  const symbol = { ...R.SYMBOL, ...(SYMBOLS[modelCell()] || {}) }[q] || q;
  return `${symbol} (${modelQuantities()[q] || q})`;
}

// The quantity choices of the chosen run's cell; keeps the choice where the cell has it, else
// its cell state C, else h (what the trace API picks by default)
function showQuantities() {
  const select = $("cell-quantity"), quantities = modelQuantities(), before = select.value;
  select.textContent = "";
  for (const q of Object.keys(quantities)) select.add(new Option(quantityName(q), q));
  select.value = before in quantities ? before : "c" in quantities ? "c" : "h";
}
let cellTrace = null; // the last /v1/trace answer, while it matches the text on the page
let traceSerial = 0; // the latest trace request's number: only its answer (or failure) is shown

// Where a cell value lies on its scale: gates as they are ([0, 1]), C by the largest |C| shown
// (its own range, as on the viz page), h and C~ as they are ([-1, 1])
function scaled(q, value) {
  return q === "c" ? value / Math.max(cellTrace.scale, 1e-6) : value;
}

// Colours one span by the chosen quantity; `value` is its cell value (cell mode) or null.
function paintSpan(span, value) {
  const mode = colourBy();
  span.style.background = "";
  if (mode === "surprisal" && span.lp !== undefined) {
    span.style.background = R.shade("surprisal", bits(span.lp));
  } else if (mode === "cell" && value !== null && value !== undefined) {
    span.style.background = R.shade(R.scaleOf(cellTrace.quantity), scaled(cellTrace.quantity, value));
  }
}

// The values of the trace on the page, while they line up with its characters; else null
function tracedValues() {
  return colourBy() === "cell" && cellTrace && cellTrace.values.length === spans.length ? cellTrace.values : null;
}

function repaint() {
  const values = tracedValues();
  spans.forEach((span, i) => paintSpan(span, values && values[i]));
  $("legend").hidden = colourBy() !== "surprisal";
  $("cell-legend").hidden = !values;
  if (values) {
    const q = cellTrace.quantity, scale = R.scaleOf(q);
    $("cell-name").textContent = `layer ${cellTrace.layer} unit ${cellTrace.unit}, ${quantityName(q)}`;
    const high = q === "c" ? cellTrace.scale : 1;
    $("cell-low").textContent = scale === "gate" ? "0" : (-high).toFixed(2);
    $("cell-high").textContent = high.toFixed(2);
    $("cell-legend").querySelector(".scale").style.background = R.gradient(scale);
  }
}

// The hover card of the character `span`: its surprisal, the likeliest next characters (the
// scores of the next span's place) and, coloured by a cell, that unit's gates and state there.
function showCard(span) {
  const next = spans[span.index + 1];
  const guesses = next && next.top ? Object.entries(next.top).map(([ch, lp]) => [ch, Math.exp(lp)])
    .sort((a, b) => b[1] - a[1]) : [];
  const values = tracedValues() && cellTrace.unit_values;
  const unit = values ? { label: `layer ${cellTrace.layer} \u00b7 unit ${cellTrace.unit}`,
    values: Object.fromEntries(Object.entries(values).map(([q, column]) => [q, column[span.index]])),
    symbols: SYMBOLS[modelCell()] } : null;
  R.fillCard($("card"), { ch: span.textContent, where: `#${span.index + 1}`,
    bits: span.lp === undefined ? null : bits(span.lp), guesses, unit });
  R.placeCard($("card"), span);
}

function showCells(cells) {
  const list = $("cells");
  list.textContent = "";
  for (const cell of cells) {
    const item = document.createElement("li");
    if (cell.follows === false) { // noise, not a finding: say so
      item.className = "none";
      item.textContent = `${cell.feature}: no unit follows it (best |r| = ${Math.abs(cell.r).toFixed(2)})`;
      list.appendChild(item);
      continue;
    }
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
  const serial = ++traceSerial;
  try {
    const response = await fetch("/v1/trace", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (serial !== traceSerial) return; // a later request (another cell, run or text) replaces it
    if (!response.ok) throw new Error((answer.error && answer.error.message) || `HTTP ${response.status}`);
    if ($("output").textContent !== text) return; // a new generation began meanwhile
    cellTrace = answer;
    $("cell-layer").value = answer.layer;
    $("cell-unit").value = answer.unit;
    showCells(answer.cells);
    repaint();
    setStatus(`coloured by layer ${answer.layer} unit ${answer.unit}, ${quantityName(answer.quantity)}`);
  } catch (error) {
    if (serial !== traceSerial) return;
    forgetTrace(); // a failed request leaves no cells of an earlier text behind
    setStatus(`Error: ${error.message}`, true);
  }
}

// Drops the trace and its ranked cells: they belong to a text or run no longer shown
function forgetTrace() {
  traceSerial += 1; // and an answer still on its way is not shown
  cellTrace = null;
  showCells([]);
  repaint();
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
    option.dataset.cell = (model.textgen && model.textgen.cell) || "lstm";
    if (model.textgen && model.textgen.quantities) option.dataset.quantities = JSON.stringify(model.textgen.quantities);
    select.appendChild(option);
  }
  showModelInfo();
}

function describe(info) {
  if (!info.units) return "";
  const bpc = info.best_val_bpc == null ? "" : `, best ${info.best_val_bpc.toFixed(3)} bpc`;
  const cell = !info.cell || info.cell === "lstm" ? "LSTM" : info.cell;
  return `${info.layers} \u00d7 ${info.units} ${cell}, ${info.vocab_size} characters, ` +
    `${info.steps.toLocaleString()} steps${bpc}`;
}

function showModelInfo() {
  const option = $("model").selectedOptions[0];
  $("model-info").textContent = option ? option.dataset.info : "";
  showQuantities();
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
  spans = [];
  $("card").hidden = true;
  forgetTrace();
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
    R.fontHint($("font-hint"), output, output.textContent);
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
  $("model").addEventListener("change", () => { showModelInfo(); forgetTrace(); });
  $("colour-by").addEventListener("change", chooseColouring);
  for (const id of ["cell-layer", "cell-unit", "cell-quantity"]) $(id).addEventListener("change", traceOutput);
  let hovered = null; // the character under the pointer, whose card is shown
  $("output").addEventListener("mouseover", (event) => {
    if (event.target.index === undefined) return;
    hovered = event.target;
    showCard(hovered);
  });
  $("output").addEventListener("mouseleave", () => { $("card").hidden = true; hovered = null; });
  $("output").addEventListener("scroll", () => { if (hovered) R.placeCard($("card"), hovered); });
  $("legend").querySelector(".scale").style.background = R.gradient("surprisal");
  $("surprisal-max").textContent = R.SURPRISAL_MAX_BITS;
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); generate(); }
  });
}

bindControls();
chooseColouring();
loadModels().catch((error) => setStatus(`Error: cannot list the runs (${error.message})`, true));
