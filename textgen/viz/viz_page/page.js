"use strict";
// textgen viz page: decodes the embedded trace, renders one span per character once, and
// recolours the spans (one style write each) when another quantity, layer or unit is chosen.
// The colour scales, the hover card and the font hint are textgen's shared renderer
// (TextgenRender, textgen/page_assets/render.js, inlined before this script).

const TYPES = { uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array, float32: Float32Array };
const R = TextgenRender;
// what each quantity means, for the legend: the LSTM family's (lstm, peephole, cifg) and the GRU's;
// any other cell's quantities are named by the cell itself (header.quantity_names)
const LSTM_MEANING = {
  surprisal: "bits of surprise at each character",
  i: "input gate: 0 = write nothing, 1 = write C\u0303",
  f: "forget gate: 0 = forget C, 1 = keep it",
  g: "candidate C\u0303, what would be written",
  o: "output gate: 0 = hide C, 1 = show it",
  c: "cell state C (this unit's own range)",
  h: "hidden state h = o \u00b7 tanh(C)",
};
const GRU_MEANING = {
  surprisal: LSTM_MEANING.surprisal,
  z: "update gate: 0 = take h\u0303, 1 = keep h",
  r: "reset gate: 0 = ignore h in h\u0303, 1 = use it",
  g: "candidate h\u0303, what h would become",
  h: "hidden state h = z \u00b7 h + (1 \u2212 z) \u00b7 h\u0303",
};
const GRU_SYMBOL = { g: "h\u0303" };
// set from the header by `cellOf` (the trace's cell: its quantities, gates, names)
let MEANING = LSTM_MEANING, GATES = ["i", "f", "o"], SYMBOL = R.SYMBOL;

function cellOf(header) {
  const gru = header.cell === "gru", names = header.quantity_names || {};
  MEANING = { surprisal: LSTM_MEANING.surprisal };
  for (const q of header.quantities) MEANING[q] = (gru ? GRU_MEANING : LSTM_MEANING)[q] || names[q] || q;
  GATES = header.sigmoid_gates || ["i", "f", "o"];
  SYMBOL = gru ? { ...R.SYMBOL, ...GRU_SYMBOL } : R.SYMBOL;
}

const $ = (id) => document.getElementById(id);

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

const visible = R.visible;

class Page {
  constructor(header, arrays) {
    this.header = header;
    this.arrays = arrays;
    this.n = header.length;
    this.levels = (1 << header.bits) - 1;
    this.chars = Array.from(arrays.ids, (id) => header.vocab[id]);
    this.state = { quantity: "surprisal", layer: 0, unit: 0 };
    // one colour per stored level: level k of a gate is k / levels, of a signed quantity
    // -1 + 2k / levels (C's levels are of its unit's own range, so also -1 .. 1 here)
    const steps = Array.from({ length: this.levels + 1 }, (_, k) => k / this.levels);
    this.palettes = {
      gate: steps.map((x) => R.shade("gate", x)),
      signed: steps.map((x) => R.shade("signed", 2 * x - 1)),
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
    R.fontHint($("font-hint"), $("text"), this.chars.join(""));
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
      this.hovered = event.target.index;
      this.showTooltip(this.hovered);
    });
    text.addEventListener("mouseleave", () => { $("tooltip").hidden = true; this.hovered = null; });
  }

  renderControls() {
    const layer = $("layer");
    for (let k = 0; k < this.header.layers; k++) layer.add(new Option(String(k), String(k)));
    $("unit").max = this.header.units - 1;
    for (const q of this.header.quantities) {  // the cell's own quantities, in its order
      $("quantity").add(new Option(`${SYMBOL[q] || q}: ${MEANING[q].split(/[:,(]| =/)[0].trim()}`, q));
    }
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
      row.title = this.header.features[cell.feature] || "";
      if (cell.follows === false) { // noise, not a finding: say so, with the best r there was
        row.classList.add("none");
        const none = row.insertCell();
        none.colSpan = 2;
        none.textContent = `no unit follows it (best |r| = ${Math.abs(cell.r).toFixed(2)})`;
        continue;
      }
      row.insertCell().textContent =
        `${SYMBOL[cell.quantity]} \u00b7 layer ${cell.layer} \u00b7 unit ${cell.unit}`;
      const r = row.insertCell();
      r.textContent = cell.r.toFixed(2);
      r.className = "r";
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
    // the shared scale, 0 to R.SURPRISAL_MAX_BITS bits; char t shows surprisal[t - 1]
    const s = this.arrays.surprisal;
    this.surprisalColour = Array.from({ length: this.n }, (_, t) => t ? R.shade("surprisal", s[t - 1]) : "");
  }

  unitValues(quantity, layer, unit) {
    const array = this.arrays[`values/${layer}/${quantity}`];
    return array.subarray(unit * this.n, (unit + 1) * this.n);
  }

  range(quantity, layer, unit) {
    if (quantity === "c") { const m = this.header.c_scale[layer][unit]; return [-m, m]; }
    return GATES.includes(quantity) ? [0, 1] : [-1, 1];
  }

  value(quantity, layer, unit, t) {
    const [low, high] = this.range(quantity, layer, unit);
    return low + (this.unitValues(quantity, layer, unit)[t] / this.levels) * (high - low);
  }

  select(change, updateHash = true) {
    Object.assign(this.state, change);
    const { quantity, layer, unit } = this.state;
    $("quantity").value = quantity;
    for (const control of document.querySelectorAll(".unit-control")) control.hidden = quantity === "surprisal";
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
    if (this.hovered !== null && this.hovered !== undefined && !$("tooltip").hidden) this.showTooltip(this.hovered);
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
    let low, high;
    if (quantity === "surprisal") {
      for (let t = 0; t < this.n; t++) spans[t].style.backgroundColor = this.surprisalColour[t];
      [low, high] = [0, R.SURPRISAL_MAX_BITS];
    } else {
      const palette = GATES.includes(quantity) ? this.palettes.gate : this.palettes.signed;
      const levels = this.unitValues(quantity, layer, unit);
      for (let t = 0; t < this.n; t++) spans[t].style.backgroundColor = palette[levels[t]];
      [low, high] = this.range(quantity, layer, unit);
    }
    $("legend-bar").style.background = R.gradient(R.scaleOf(quantity));
    const surprisal = quantity === "surprisal";
    $("legend-low").textContent = surprisal ? "0" : this.format(low);
    $("legend-high").textContent = surprisal ? `\u2265 ${high} bits` : this.format(high);
    const where = quantity === "surprisal" ? "" : `, layer ${layer}, unit ${unit}`;
    $("legend-caption").textContent = `${MEANING[quantity]}${where}`;
  }

  format(x) {
    if (Math.abs(x) >= 100) return x.toFixed(0);
    return Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(this.header.bits >= 6 ? 3 : 2);
  }

  // the unit's own per-unit weights beside its kernels (the peepholes w_ci, w_cf, w_co; the
  // GRU's b_h rows), as the card's label shows them: "" for a cell without any
  unitWeights(layer, unit) {
    const weights = (this.header.unit_weights || [])[layer] || {}, rows = this.header.unit_weight_rows || {};
    return Object.entries(weights).map(([name, values]) => ` \u00b7 ${name} ` +
      values.map((row, k) => `${(rows[name] || [])[k] || k} ${this.format(row[unit])}`).join(" ")).join("");
  }

  showTooltip(t) {
    const { layer, unit } = this.state, header = this.header, k = header.top_k;
    const guesses = Array.from({ length: k }, (_, j) =>
      [header.vocab[this.arrays.top_ids[t * k + j]], this.arrays.top_probs[t * k + j] / 65535]);
    // the quantities the model's cell computes (textgen.cell), in its order
    const values = Object.fromEntries(header.quantities.map((q) => [q, this.value(q, layer, unit, t)]));
    R.fillCard($("tooltip"), {
      ch: this.chars[t], where: `#${t + 1} \u00b7 line ${this.line[t]}, column ${this.column[t]}`,
      bits: t > 0 ? this.arrays.surprisal[t - 1] : null, guesses,
      unit: { label: `layer ${layer} \u00b7 unit ${unit}${this.unitWeights(layer, unit)}`, values,
        symbols: SYMBOL }, format: (x) => this.format(x),
    });
    R.placeCard($("tooltip"), this.spans[t]);
  }
}

async function main() {
  const header = JSON.parse($("header").textContent);
  cellOf(header);
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
