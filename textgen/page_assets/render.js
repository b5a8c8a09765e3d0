"use strict";
// textgen's one renderer for its two pages (`textgen viz`, inlined into its single file, and the
// `textgen serve` playground, served at /assets/render.js): the colour scales, the hover card and
// the missing-font hint. A classic script defining one global, TextgenRender, so it works both
// inlined and served, with no build step.

const TextgenRender = (() => {
  // One convention: more is warmer. Signed values run blue (negative) - white (0) - red
  // (positive); gates, in [0, 1], run from white (0) to the same red (1); surprisal from white
  // (0 bits) through yellow to red at SURPRISAL_MAX_BITS and above.
  const SURPRISAL_MAX_BITS = 10;
  const STOPS = {
    signed: [[33, 102, 172], [103, 169, 207], [209, 229, 240], [247, 247, 247], [253, 219, 199],
      [239, 138, 98], [178, 24, 43]],
    gate: [[247, 247, 247], [253, 219, 199], [239, 138, 98], [178, 24, 43]],
    surprisal: [[255, 255, 255], [254, 224, 144], [253, 174, 97], [244, 109, 67], [215, 48, 39]],
  };
  const LEVELS = 256; // shades per scale: finer than the 8-bit values the viz page stores
  const RANGE = { signed: [-1, 1], gate: [0, 1], surprisal: [0, SURPRISAL_MAX_BITS] };

  function ramp(stops, count) {
    // `count` CSS colours evenly along the piecewise-linear colour `stops`
    const colours = [];
    for (let k = 0; k < count; k++) {
      const x = count === 1 ? 0 : (k / (count - 1)) * (stops.length - 1);
      const j = Math.min(Math.floor(x), stops.length - 2), w = x - j;
      const rgb = stops[j].map((v, c) => Math.round(v + (stops[j + 1][c] - v) * w));
      colours.push(`rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`);
    }
    return colours;
  }
  const PALETTES = Object.fromEntries(Object.entries(STOPS).map(([k, s]) => [k, ramp(s, LEVELS)]));

  // The colour of `value` on scale `kind` ("signed": [-1, 1], "gate": [0, 1], "surprisal": bits)
  function shade(kind, value) {
    const [low, high] = RANGE[kind];
    const x = Math.min(Math.max((value - low) / (high - low), 0), 1);
    return PALETTES[kind][Math.round(x * (LEVELS - 1))];
  }

  // A CSS gradient of the scale, for legends
  function gradient(kind) {
    const stops = STOPS[kind].map((rgb) => `rgb(${rgb.join(", ")})`);
    return `linear-gradient(to right, ${stops.join(", ")})`;
  }

  // Which scale a quantity uses: gates (i, f, o) "gate", the rest "signed"
  function scaleOf(quantity) {
    return quantity === "surprisal" ? "surprisal" : ["i", "f", "o", "z", "r"].includes(quantity) ? "gate" : "signed";
  }

  function visible(ch) {
    // control characters (but tab and newline) as their Unicode control pictures, the rest as itself
    const code = ch.codePointAt(0);
    if (code < 32 && ch !== "\t" && ch !== "\n") return String.fromCodePoint(0x2400 + code);
    return code === 127 ? "\u2421" : ch;
  }

  const NAMED = { "\n": ["\u21b5", "newline"], "\t": ["\u21e5", "tab"], " ": ["\u2423", "space"] };

  function shown(ch) {
    return NAMED[ch] ? NAMED[ch][0] : visible(ch);
  }

  function describeChar(ch) {
    const code = "U+" + ch.codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
    return `${NAMED[ch] ? NAMED[ch].join(" ") : visible(ch)}  ${code}`;
  }

  // every cell's quantities (textgen.cell: the LSTM's i, f, C~, o, C, h; the GRU's z, r, h~, h)
  const SYMBOL = { i: "i", f: "f", g: "C\u0303", o: "o", c: "C", z: "z", r: "r", h: "h" };

  function node(tag, text, className) {
    const element = document.createElement(tag);
    if (text !== undefined) element.textContent = text;
    if (className) element.className = className;
    return element;
  }

  // Fills the hover card `tip` with one character's facts:
  // {ch, where, bits (its surprisal, or null), guesses: [[character, probability]],
  //  unit: {label, values: {i, f, g, o, c, h} as numbers}, format (number -> text)}
  function fillCard(tip, card) {
    const format = card.format || ((x) => x.toFixed(3));
    tip.replaceChildren();
    const title = tip.appendChild(node("div", undefined, "title"));
    title.append(node("span", describeChar(card.ch), "char"));
    if (card.where) title.append(node("span", card.where, "where"));
    if (card.bits !== null && card.bits !== undefined) {
      const p = 100 * 2 ** -card.bits;
      tip.appendChild(node("div", `surprise: ${card.bits.toFixed(2)} bits (the model gave it ` +
        `p = ${p < 0.1 ? p.toPrecision(2) : p.toFixed(1)}%)`, "surprise"));
    }
    if (card.guesses && card.guesses.length) {
      const guesses = tip.appendChild(node("div", "next character: ", "guesses"));
      for (const [ch, p] of card.guesses) {
        // one entry never breaks across lines: the card wraps between entries only
        const entry = guesses.appendChild(node("span", undefined, "guess"));
        entry.append(node("span", shown(ch), "guess-char"), ` ${(100 * p).toFixed(1)}%`);
      }
    }
    if (card.unit) {
      tip.appendChild(node("div", card.unit.label, "unit"));
      const table = tip.appendChild(node("table"));
      const heads = table.insertRow(), values = table.insertRow();
      const symbols = { ...SYMBOL, ...(card.unit.symbols || {}) };  // a cell's own (the GRU's h~)
      for (const q of Object.keys(symbols)) {
        if (card.unit.values[q] === undefined) continue;
        heads.appendChild(node("th", symbols[q]));
        const cell = values.insertCell();
        cell.dataset.q = q;
        cell.textContent = format(card.unit.values[q]);
      }
    }
    tip.hidden = false;
  }

  // Places the card beside `anchor` (the hovered character's element): under its line, or above
  // it where there is no room below, never over the line being read.
  function placeCard(tip, anchor) {
    if (tip.hidden) return;
    const rect = anchor.getBoundingClientRect(), gap = 6;
    const x = Math.min(rect.left, window.innerWidth - tip.offsetWidth - 8);
    const below = rect.bottom + gap + tip.offsetHeight <= window.innerHeight;
    const y = below ? rect.bottom + gap : rect.top - gap - tip.offsetHeight;
    tip.style.left = `${Math.max(0, x)}px`;
    tip.style.top = `${Math.max(0, y)}px`;
  }

  // Characters of `text` that this browser draws as the missing-glyph box in `fontFamily`:
  // found by rendering (document.fonts.check answers true for fonts that are not installed).
  // Each distinct character (up to `most`) is drawn on a canvas and compared, pixel by pixel,
  // with a private-use code point no font has; one that draws nothing counts as missing too.
  function missingGlyphs(text, fontFamily, most = 64) {
    // non-ASCII characters that draw something: no spaces, marks, controls or format characters
    const candidates = [...new Set(Array.from(text).filter((ch) => ch.codePointAt(0) > 0x7f &&
      !/[\p{Z}\p{M}\p{C}]/u.test(ch)))].slice(0, most);
    if (!candidates.length) return [];
    const size = 32, canvas = document.createElement("canvas");
    canvas.width = canvas.height = 2 * size;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.font = `${size}px ${fontFamily}`;
    context.textBaseline = "middle";
    const pixels = (ch) => {
      context.clearRect(0, 0, canvas.width, canvas.height);
      context.fillText(ch, 4, size);
      return context.getImageData(0, 0, canvas.width, canvas.height).data;
    };
    const box = pixels("\u{10fffd}");
    const same = (a, b) => a.every((v, k) => v === b[k]);
    return candidates.filter((ch) => {
      const drawn = pixels(ch);
      return same(drawn, box) || drawn.every((v, k) => k % 4 !== 3 || v === 0);
    });
  }

  const CJK = /[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\u{20000}-\u{3134f}]/u;

  // Shows in `hint` which font to install when `element`'s text has characters the browser has
  // no glyph for; hides it otherwise. Returns the missing characters.
  function fontHint(hint, element, text) {
    const missing = missingGlyphs(text, getComputedStyle(element).fontFamily);
    hint.hidden = !missing.length;
    if (missing.length) {
      const font = missing.some((ch) => CJK.test(ch))
        ? "a CJK font, such as Noto Sans CJK (Debian and Ubuntu: apt install fonts-noto-cjk)"
        : missing.some((ch) => /\p{Extended_Pictographic}/u.test(ch))
          ? "an emoji font, such as Noto Color Emoji (Debian and Ubuntu: apt install fonts-noto-color-emoji)"
          : "a font for their script, such as one of the Noto fonts";
      const some = missing.slice(0, 8).join(" ") + (missing.length > 8 ? " \u2026" : "");
      hint.textContent = `This browser has no font for ${missing.length} character` +
        `${missing.length === 1 ? "" : "s"} of the text (${some}), shown as boxes: install ${font}.`;
    }
    hint.dataset.missing = missing.join("");
    return missing;
  }

  return { SURPRISAL_MAX_BITS, SYMBOL, shade, gradient, scaleOf, visible, shown, describeChar,
    fillCard, placeCard, missingGlyphs, fontHint };
})();
