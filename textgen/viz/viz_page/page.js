"use strict";
// textgen viz page: decodes the embedded trace, renders one span per character once, and
// recolours the spans (one style write each) when another quantity, layer or unit is chosen.

const TYPES = { uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array, float32: Float32Array };
const SYMBOL = { i: "i", f: "f", g: "C\u0303", o: "o", c: "C", h: "h" };
const MEANING = {
  surprisal: "bits of surprise at each character",
  i: "input gate: 0 = write nothing, 1 = write C\u0303",
  f: "forget gate: 0 = forget C, 1 = keep it",
  g: "candidate C\u0303, what would be written",
  o: "output gate: 0 = hide C, 1 = show it",
  c: "cell state C (this unit's own range)",
  h: "hidden state h = o \u00b7 tanh(C)",
};
const GATES = ["i", "f", "o"];
const WHITE_BLUE = [[255, 255, 255], [198, 219, 239], [107, 174, 214], [66, 146, 198]];
const RED_WHITE_BLUE = [[214, 96, 77], [244, 165, 130], [247, 247, 247], [146, 197, 222], [67, 147, 195]];
const HEAT = [[255, 255, 255], [254, 224, 144], [253, 174, 97], [244, 109, 67], [215, 48, 39]];
const SURPRISAL_SHADES = 64;

const $ = (id) => document.getElementById(id);

function ramp(stops, count) {
  // `count` CSS colours evenly along the piecewise-linear colour `stops`
  const colours = [];
  for (let k = 0; k < count; k++) {
    const x = count === 1 ? 0 : (k / (count - 1)) * (stops.length - 1);
    const j = Math.min(Math.floor(x), stops.length - 2), w = x - j;
    const rgb = stops[j].map((v, c) => Math.round(v + (stops[j + 1][c] - v) * w));
    colours.push(`rgb(${rgb[0]},${rgb[1]},${rgb[2]})`);
  }
  return colours;
}

async function decodeArrays(header) {
  // base64 -> bytes once; each array is its own deflate stream, inflated by the browser
  const binary = atob($("data").textContent.trim());
  const bytes = new Uint8Array(binary.length);
  for (let k = 0; k < binary.length; k++) bytes[k] = binary.charCodeAt(k);
  const arrays = {};
  await Promise.all(header.arrays.map(async (entry) => {
    const slice = bytes.subarray(entry.offset, entry.offset + entry.size);
    const stream = new Blob([slice]).stream().pipeThrough(new DecompressionStream("deflate"));
    arrays[entry.name] = new TYPES[entry.dtype](await new Response(stream).arrayBuffer());
  }));
  return arrays;
}

function describeChar(ch) {
  const named = { "\n": "\u21b5 newline", "\t": "\u21e5 tab", " ": "\u2423 space" };
  const code = "U+" + ch.codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
  return `${named[ch] || visible(ch)}  ${code}`;
}

function visible(ch) {
  // control characters (but tab and newline) as their Unicode control pictures, the rest as itself
  const code = ch.codePointAt(0);
  if (code < 32 && ch !== "\t" && ch !== "\n") return String.fromCodePoint(0x2400 + code);
  return code === 127 ? "\u2421" : ch;
}

class Page {
  constructor(header, arrays) {
    this.header = header;
    this.arrays = arrays;
    this.n = header.length;
    this.levels = (1 << header.bits) - 1;
    this.chars = Array.from(arrays.ids, (id) => header.vocab[id]);
    this.state = { quantity: "surprisal", layer: 0, unit: 0 };
    this.palettes = {
      gate: ramp(WHITE_BLUE, this.levels + 1),
      signed: ramp(RED_WHITE_BLUE, this.levels + 1),
      surprisal: ramp(HEAT, SURPRISAL_SHADES),
    };
  }

  render() {
    const { header } = this;
    $("run").textContent = `${header.run} \u00b7 ${header.checkpoint}`;
    document.title = `textgen viz: ${header.run}`;
    const bits = Array.from(this.arrays.surprisal.subarray(0, this.n - 1));
    const mean = bits.length ? bits.reduce((a, b) => a + b, 0) / bits.length : NaN;
    const characters = `${this.n.toLocaleString("en")} character${this.n === 1 ? "" : "s"}`;
    $("summary").textContent = `${characters} from ${header.source} \u00b7 ` +
      `${header.layers} layer${header.layers > 1 ? "s" : ""} \u00d7 ${header.units} units \u00b7 ` +
      (isNaN(mean) ? "" : `${mean.toFixed(3)} bits per character \u00b7 `) +
      `values stored to ${header.bits} bits (${this.levels + 1} levels); exact numbers: --format npz`;
    for (const notice of header.notices) {
      const item = document.createElement("li");
      item.textContent = notice;
      $("notices").appendChild(item);
    }
    this.renderText();
    this.renderControls();
    this.renderCells();
    this.renderSaturation();
    this.surprisalScale();
  }

  renderText() {
    const fragment = document.createDocumentFragment();
    this.spans = new Array(this.n);
    this.line = new Int32Array(this.n);
    this.column = new Int32Array(this.n);
    let line = 1, column = 1;
    for (let t = 0; t < this.n; t++) {
      const ch = this.chars[t], span = document.createElement("span");
      if (ch === "\n") span.className = "nl";
      else if (visible(ch) !== ch) span.className = "ctl";
      span.textContent = visible(ch);
      span.index = t;
      this.spans[t] = span;
      this.line[t] = line;
      this.column[t] = column;
      if (ch === "\n") { line += 1; column = 1; } else column += 1;
      fragment.appendChild(span);
    }
    const text = $("text");
    text.appendChild(fragment);
    text.addEventListener("mouseover", (event) => {
      if (event.target.index === undefined) return;
      this.hovered = { t: event.target.index, event };
      this.showTooltip(this.hovered.t, event);
    });
    text.addEventListener("mousemove", (event) => this.placeTooltip(event));
    text.addEventListener("mouseleave", () => { $("tooltip").hidden = true; this.hovered = null; });
  }

  renderControls() {
    const layer = $("layer");
    for (let k = 0; k < this.header.layers; k++) layer.add(new Option(String(k), String(k)));
    $("unit").max = this.header.units - 1;
    $("quantity").addEventListener("change", (e) => this.select({ quantity: e.target.value }));
    layer.addEventListener("change", (e) => this.select({ layer: Number(e.target.value) }));
    $("unit").addEventListener("input", (e) => {
      const unit = Number(e.target.value);
      if (Number.isInteger(unit) && unit >= 0 && unit < this.header.units) this.select({ unit });
    });
    $("prev").addEventListener("click", () => this.step(-1));
    $("next").addEventListener("click", () => this.step(1));
    document.addEventListener("keydown", (e) => {
      if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
      if (e.key === "[") this.step(-1);
      if (e.key === "]") this.step(1);
    });
    window.addEventListener("hashchange", () => this.select(this.fromHash(), false));
  }

  step(delta) {
    const units = this.header.units;
    this.select({ unit: (this.state.unit + delta + units) % units });
  }

  renderCells() {
    const body = $("cells").querySelector("tbody");
    let previous = null;
    this.cellRows = [];
    for (const cell of this.header.cells) {
      const row = body.insertRow();
      if (cell.feature === previous) { row.className = "more"; row.hidden = true; }
      previous = cell.feature;
      row.insertCell().textContent = cell.feature;
      row.cells[0].className = "feature";
      row.insertCell().textContent =
        `${SYMBOL[cell.quantity]} \u00b7 layer ${cell.layer} \u00b7 unit ${cell.unit}`;
      const r = row.insertCell();
      r.textContent = cell.r.toFixed(2);
      r.className = "r";
      row.title = this.header.features[cell.feature] || "";
      row.addEventListener("click",
        () => this.select({ quantity: cell.quantity, layer: cell.layer, unit: cell.unit }));
      this.cellRows.push([row, cell]);
    }
    const toggle = $("more-cells");
    toggle.hidden = !this.cellRows.some(([row]) => row.hidden);
    let expanded = false;
    toggle.addEventListener("click", () => {
      expanded = !expanded;
      for (const row of body.querySelectorAll("tr.more")) row.hidden = !expanded;
      toggle.textContent = expanded ? "show the best cell per feature" : "show more cells per feature";
    });
  }

  renderSaturation() {
    const NS = "http://www.w3.org/2000/svg", size = 100, pad = 8;
    const make = (tag, attributes) => {
      const node = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
      return node;
    };
    this.markers = [];
    this.header.saturation.forEach((gates, layer) => {
      for (const gate of GATES) {
        const [low, high] = gates[gate];
        const figure = document.createElement("figure");
        const svg = make("svg", { viewBox: `0 0 ${size + 2 * pad} ${size + 2 * pad}`, role: "img" });
        const frame = { fill: "#fafbfc", stroke: "#d0d7de" };
        svg.appendChild(make("rect", { x: pad, y: pad, width: size, height: size, ...frame }));
        // x + y <= 1 (the two fractions are of disjoint sets of characters): the boundary
        const edge = { x1: pad, y1: pad, x2: pad + size, y2: pad + size, stroke: frame.stroke };
        svg.appendChild(make("line", edge));
        low.forEach((x, unit) => {
          const dot = make("circle", { cx: pad + x * size, cy: pad + (1 - high[unit]) * size, r: 2.2,
            fill: "#0969da", "fill-opacity": 0.55 });
          const title = make("title", {});
          title.textContent = `layer ${layer}, unit ${unit}: ` +
            `${SYMBOL[gate]} < 0.1 ${(100 * x).toFixed(0)}%, ` +
            `> 0.9 ${(100 * high[unit]).toFixed(0)}% of characters`;
          dot.appendChild(title);
          dot.addEventListener("click", () => this.select({ quantity: gate, layer, unit }));
          svg.appendChild(dot);
        });
        const marker = make("circle", { r: 5, fill: "none", stroke: "#cf222e", "stroke-width": 2 });
        svg.appendChild(marker);
        this.markers.push({ marker, layer, low, high });
        figure.appendChild(svg);
        const caption = document.createElement("figcaption");
        caption.textContent = `${MEANING[gate].split(":")[0]}, layer ${layer}`;
        figure.appendChild(caption);
        $("saturation").appendChild(figure);
      }
    });
  }

  surprisalScale() {
    // shades from 0 bits to the 99th percentile (at least 4 bits); char t shows surprisal[t - 1]
    const s = this.arrays.surprisal;
    const sorted = Float32Array.from(s.subarray(0, Math.max(this.n - 1, 0))).sort();
    this.surprisalMax = Math.max(4, sorted.length ? sorted[Math.floor(0.99 * (sorted.length - 1))] : 0);
    this.surprisalShade = new Int16Array(this.n).fill(-1);
    for (let t = 1; t < this.n; t++) {
      const x = Math.min(s[t - 1] / this.surprisalMax, 1);
      this.surprisalShade[t] = Math.round(x * (SURPRISAL_SHADES - 1));
    }
  }

  unitValues(quantity, layer, unit) {
    const array = this.arrays[`values/${layer}/${quantity}`];
    return array.subarray(unit * this.n, (unit + 1) * this.n);
  }

  range(quantity, layer, unit) {
    if (quantity === "c") { const m = this.header.c_scale[layer][unit]; return [-m, m]; }
    return quantity === "g" || quantity === "h" ? [-1, 1] : [0, 1];
  }

  value(quantity, layer, unit, t) {
    const [low, high] = this.range(quantity, layer, unit);
    return low + (this.unitValues(quantity, layer, unit)[t] / this.levels) * (high - low);
  }

  select(change, updateHash = true) {
    Object.assign(this.state, change);
    const { quantity, layer, unit } = this.state;
    $("quantity").value = quantity;
    $("layer").value = String(layer);
    if (Number($("unit").value) !== unit) $("unit").value = unit;
    this.recolour();
    for (const [row, cell] of this.cellRows) {
      const chosen = cell.quantity === quantity && cell.layer === layer && cell.unit === unit;
      row.classList.toggle("active", chosen);
    }
    for (const { marker, layer: l, low, high } of this.markers) {
      marker.setAttribute("visibility", l === layer ? "visible" : "hidden");
      marker.setAttribute("cx", 8 + low[unit] * 100);
      marker.setAttribute("cy", 8 + (1 - high[unit]) * 100);
    }
    if (updateHash) history.replaceState(null, "", `#q=${quantity}&layer=${layer}&unit=${unit}`);
    if (this.hovered && !$("tooltip").hidden) this.showTooltip(this.hovered.t, this.hovered.event);
  }

  fromHash() {
    const params = new URLSearchParams(location.hash.slice(1)), state = {};
    const quantity = params.get("q"), layer = Number(params.get("layer")), unit = Number(params.get("unit"));
    if (quantity in MEANING) state.quantity = quantity;
    const valid = (name, x, limit) => params.has(name) && Number.isInteger(x) && x >= 0 && x < limit;
    if (valid("layer", layer, this.header.layers)) state.layer = layer;
    if (valid("unit", unit, this.header.units)) state.unit = unit;
    return state;
  }

  recolour() {
    const { quantity, layer, unit } = this.state, spans = this.spans;
    let low, high, palette;
    if (quantity === "surprisal") {
      palette = this.palettes.surprisal;
      for (let t = 0; t < this.n; t++) {
        const shade = this.surprisalShade[t];
        spans[t].style.backgroundColor = shade < 0 ? "" : palette[shade];
      }
      [low, high] = [0, this.surprisalMax];
    } else {
      palette = GATES.includes(quantity) ? this.palettes.gate : this.palettes.signed;
      const levels = this.unitValues(quantity, layer, unit);
      for (let t = 0; t < this.n; t++) spans[t].style.backgroundColor = palette[levels[t]];
      [low, high] = this.range(quantity, layer, unit);
    }
    const stops = [0, 0.25, 0.5, 0.75, 1].map((x) => palette[Math.round(x * (palette.length - 1))]);
    $("legend-bar").style.background = `linear-gradient(to right, ${stops.join(", ")})`;
    $("legend-low").textContent = this.format(low);
    $("legend-high").textContent =
      quantity === "surprisal" ? `\u2265 ${this.format(high)} bits` : this.format(high);
    const where = quantity === "surprisal" ? "" : `, layer ${layer}, unit ${unit}`;
    $("legend-caption").textContent = `${MEANING[quantity]}${where}`;
  }

  format(x) {
    if (Math.abs(x) >= 100) return x.toFixed(0);
    return Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(this.header.bits >= 6 ? 3 : 2);
  }

  showTooltip(t, event) {
    const tip = $("tooltip"), { layer, unit } = this.state, header = this.header;
    tip.replaceChildren();
    const add = (tag, text, className) => {
      const node = document.createElement(tag);
      if (text !== undefined) node.textContent = text;
      if (className) node.className = className;
      tip.appendChild(node);
      return node;
    };
    const title = add("div");
    title.appendChild(Object.assign(document.createElement("span"),
      { className: "char", textContent: describeChar(this.chars[t]) }));
    title.appendChild(Object.assign(document.createElement("span"), { className: "where",
      textContent: `#${t + 1} \u00b7 line ${this.line[t]}, column ${this.column[t]}` }));
    if (t > 0) {
      const bits = this.arrays.surprisal[t - 1];
      const p = (100 * 2 ** -bits).toFixed(1);
      add("div", `surprise: ${bits.toFixed(2)} bits (the model gave it p = ${p}%)`, "surprise");
    }
    const guesses = add("div", "next character: ", "guesses");
    const k = header.top_k;
    for (let j = 0; j < k; j++) {
      const id = this.arrays.top_ids[t * k + j], p = this.arrays.top_probs[t * k + j] / 65535;
      const guess = document.createElement("span");
      guess.className = "guess";
      const ch = header.vocab[id];
      const shown = { "\n": "\u21b5", "\t": "\u21e5", " ": "\u2423" }[ch] || visible(ch);
      guess.textContent = `${j ? " \u00b7 " : ""}${shown} ${(100 * p).toFixed(1)}%`;
      guesses.appendChild(guess);
    }
    add("div", `layer ${layer} \u00b7 unit ${unit}`, "unit");
    const table = add("table"), heads = table.insertRow(), values = table.insertRow();
    for (const q of this.header.quantities) {  // what the model's cell computes (textgen.cell)
      heads.appendChild(Object.assign(document.createElement("th"), { textContent: SYMBOL[q] }));
      const cell = values.insertCell();
      cell.dataset.q = q;
      cell.textContent = this.format(this.value(q, layer, unit, t));
    }
    tip.hidden = false;
    this.placeTooltip(event);
  }

  placeTooltip(event) {
    const tip = $("tooltip");
    if (tip.hidden) return;
    const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    const below = event.clientY + 18 + tip.offsetHeight <= window.innerHeight;
    const y = below ? event.clientY + 18 : event.clientY - tip.offsetHeight - 10;
    tip.style.left = `${Math.max(0, x)}px`;
    tip.style.top = `${Math.max(0, y)}px`;
  }
}

async function main() {
  const header = JSON.parse($("header").textContent);
  if (typeof DecompressionStream === "undefined") {
    throw new Error("this browser cannot inflate the embedded data (no DecompressionStream); " +
      "open the page in a current browser");
  }
  const page = new Page(header, await decodeArrays(header));
  page.render();
  const best = header.cells[0];
  page.select(Object.assign(best ? { layer: best.layer, unit: best.unit } : {}, page.fromHash()));
  $("status").hidden = true;
  document.body.dataset.ready = "true";
}

main().catch((error) => {
  $("status").textContent = `Could not show the trace: ${error.message}`;
  console.error(error);
});
