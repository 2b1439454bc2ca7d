// The page: wires buttons, canvases and the drawing pad to onnxruntime-web and to vae.js.
// window.vaeEdge is the page's API (used by the tests and the browser benchmark).
import * as ort from "./ort/ort.wasm.min.mjs";
import * as V from "./vae.js";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const api = (window.vaeEdge = { ready: false, errors: [], strokes: [] });

function fail(message) {
  api.errors.push(message);
  const box = $("status");
  box.hidden = false;
  box.textContent = message;
}
window.addEventListener("error", (e) => fail(`error: ${e.message}`));
window.addEventListener("unhandledrejection", (e) => fail(`error: ${e.reason && e.reason.message ? e.reason.message : e.reason}`));

ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
ort.env.wasm.numThreads = Math.max(1, Number(params.get("threads") || 1));
ort.env.logLevel = "error";

let config, D, LS, IS, P, current;  // latent size and shape, image shape [C, H, W], its size
const sessions = {};

async function fetchBytes(url) {
  let r;
  try {
    r = await fetch(url);
  } catch (e) {
    throw new Error(`could not fetch ${url}: ${e.message}`);
  }
  if (!r.ok) throw new Error(`could not fetch ${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function loadVariant(v) {
  if (sessions[v]) return sessions[v];
  const entry = config.variants[v];
  if (!entry) throw new Error(`this site has no variant ${v} (it has: ${Object.keys(config.variants).join(", ")})`);
  const t0 = performance.now();
  const make = async (graph) => {
    const bytes = await fetchBytes(entry[graph]);
    try {
      return await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    } catch (e) {
      throw new Error(`onnxruntime-web could not load the ${v} ${graph} (${entry[graph]}): ${e.message || e}`);
    }
  };
  const [enc, dec] = await Promise.all([make("encoder"), make("decoder")]);
  sessions[v] = { enc, dec, loadMs: performance.now() - t0 };
  return sessions[v];
}

// ------------------------------------------------------------------------------------------
// The model's calls
// ------------------------------------------------------------------------------------------

async function decode(z, n, v = current, outputs = ["probs"]) {
  const s = await loadVariant(v);
  return s.dec.run({ z: new ort.Tensor("float32", z, [n, ...LS]) }, outputs);
}

async function encode(x, n, v = current) {
  const s = await loadVariant(v);
  const r = await s.enc.run({ x: new ort.Tensor("float32", x, [n, ...IS]) });
  return { mu: r.mu.data, logvar: r.logvar.data };
}

/** -ELBO of one preprocessed image (Float32Array C*H*W), as rt.score(x, seed=0, elbo_samples=16),
 * under the model's own likelihood (Bernoulli logits, a Gaussian around the decoded mean, or the
 * discretized logistic of 8-bit values, following the neighbours for logistic-ar). */
async function score(x, v = current) {
  const { mu, logvar } = await encode(x, 1, v);
  const draws = config.score.draws;
  const z = V.scoreLatents(mu, logvar, draws);
  if (config.model.likelihood === "gaussian") {
    const learned = config.model.learned_sigma;  // the decoder's own log_sigma per value
    const r = await decode(z, draws.length, v, learned ? ["probs", "log_sigma"] : ["probs"]);
    return { score: V.negElboGaussian(x, mu, logvar, r.probs.data, config.model.sigma, learned ? r.log_sigma.data : null),
             mu, logvar };
  }
  const lik = config.model.likelihood;
  if (lik === "logistic" || lik === "logistic-ar") {  // 8-bit values: a discretized logistic per value
    const ar = lik === "logistic-ar";
    const r = await decode(z, draws.length, v, ar ? ["probs", "log_scale", "context"] : ["probs", "log_scale"]);
    return { score: V.negElboLogistic(x, mu, logvar, r.probs.data, r.log_scale.data, ar ? r.context.data : null, IS),
             mu, logvar };
  }
  const r = await decode(z, draws.length, v, ["logits"]);
  return { score: V.negElbo(x, mu, logvar, r.logits.data), mu, logvar };
}

// ------------------------------------------------------------------------------------------
// Drawing digits on canvases
// ------------------------------------------------------------------------------------------

/** Images [n, C, H, W] (C = 1: grey, 3: colour) as a grid on a canvas. */
function paint(canvas, images, n, cols, scale = 1, shape = IS) {
  const [c, h, w] = shape, rows = Math.ceil(n / cols), pad = 2, size = c * h * w;
  canvas.width = cols * (w + pad) - pad;
  canvas.height = rows * (h + pad) - pad;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(canvas.width, canvas.height);
  img.data.fill(0);
  for (let i = 3; i < img.data.length; i += 4) img.data[i] = 255;
  for (let k = 0; k < n; k++) {
    const ox = (k % cols) * (w + pad), oy = Math.floor(k / cols) * (h + pad);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      const o = ((oy + y) * canvas.width + ox + x) * 4, at = k * size + y * w + x;
      for (let ch = 0; ch < 3; ch++) {
        img.data[o + ch] = Math.round(255 * Math.min(1, Math.max(0, images[at + (c === 3 ? ch * h * w : 0)])));
      }
    }
  }
  ctx.putImageData(img, 0, 0);
  canvas.style.aspectRatio = `${canvas.width} / ${canvas.height}`;
  canvas.dataset.scale = scale;
}

function ms(t) {
  return t < 1 ? `${(t * 1000).toFixed(0)} µs` : `${t.toFixed(1)} ms`;
}

// ------------------------------------------------------------------------------------------
// Large images (graphs of any size: a diffusers VAE): tiles blended as runtime/tiles.py does
// ------------------------------------------------------------------------------------------

const TILE_CELLS = 32;  // latent cells a side of a tile at most (SD: 256x256 pixels, ~1.3 GB in WASM)

function tileStarts(n, tile, overlap) {
  const stride = Math.max(1, tile - overlap), s = new Set([n - tile]);
  for (let a = 0; a < n - tile; a += stride) s.add(a);
  return [...s].sort((a, b) => a - b);
}

function ramp(length, lo, hi) {
  const w = new Float32Array(length).fill(1);
  for (let i = 0; i < lo; i++) w[i] = (i + 1) / (lo + 1);
  for (let i = 0; i < hi; i++) w[length - hi + i] = Math.min(w[length - hi + i], (hi - i) / (hi + 1));
  return w;
}

function tileAxis(n, tile, overlap) {
  const s = tileStarts(n, tile, overlap);
  return s.map((a, k) => [a, k ? s[k - 1] + tile - a : 0, k + 1 < s.length ? a + tile - s[k + 1] : 0]);
}

/** One latent [1, C, cells, cells] -> the image [1, IC, cells*f, cells*f], decoded tile by tile
 * (each tile one call in onnxruntime-web's worker); onProgress(done, total) after each. */
async function decodeLarge(z, cells, onProgress = () => {}) {
  const f = config.model.spatial_factor, c = LS[0], ic = IS[0];
  const tile = Math.min(cells, LS[1], TILE_CELLS), ov = cells > tile ? Math.max(1, Math.round(tile * 0.25)) : 0;
  const axis = tileAxis(cells, tile, ov), size = cells * f, tp = tile * f;
  const acc = new Float32Array(ic * size * size), weight = new Float32Array(size * size);
  const total = axis.length * axis.length, s = await loadVariant(current);
  let done = 0;
  for (const [top, up, down] of axis) {
    const wy = ramp(tp, up * f, down * f);
    for (const [left, before, after] of axis) {
      const wx = ramp(tp, before * f, after * f), piece = new Float32Array(c * tile * tile);
      for (let ch = 0; ch < c; ch++) for (let y = 0; y < tile; y++) for (let x = 0; x < tile; x++) {
        piece[(ch * tile + y) * tile + x] = z[(ch * cells + top + y) * cells + left + x];
      }
      const r = await s.dec.run({ z: new ort.Tensor("float32", piece, [1, c, tile, tile]) }, ["probs"]);
      const out = r.probs.data;
      for (let y = 0; y < tp; y++) for (let x = 0; x < tp; x++) {
        const w = wy[y] * wx[x], at = (top * f + y) * size + left * f + x;
        weight[at] += w;
        for (let ch = 0; ch < ic; ch++) acc[ch * size * size + at] += out[(ch * tp + y) * tp + x] * w;
      }
      onProgress(++done, total);
      await new Promise((r) => setTimeout(r, 0));  // let the page paint the progress
    }
  }
  for (let i = 0; i < acc.length; i++) acc[i] /= weight[i % (size * size)];
  return acc;
}

function setupLarge() {
  const f = config.model.spatial_factor;
  if (!f) return;
  $("large").hidden = false;
  const sel = $("large-size"), own = LS[1] * f;
  for (const px of [own, 2 * own, 4 * own, 256].filter((v, i, a) => v <= 1024 && a.indexOf(v) === i)) {
    sel.add(new Option(`${px}x${px}`, String(px)));
  }
  $("large-go").addEventListener("click", () => showLarge(Number(sel.value)).catch((e) => fail(e.message)));
}

/** Decode a random latent for an image of px x px; returns what it took and how responsive the
 * page stayed (the longest gap between ticks of a 10 ms timer on the page's own thread). */
async function showLarge(px, seed = Number($("seed").value) || 0, given = null) {
  const f = config.model.spatial_factor, cells = px / f;
  const g = V.normalRng(seed), z = given ? Float32Array.from(given) : new Float32Array(LS[0] * cells * cells);
  if (!given) for (let i = 0; i < z.length; i++) z[i] = g();
  const bar = $("large-progress"), seen = [];
  let last = performance.now(), gap = 0;
  const tick = setInterval(() => { const t = performance.now(); gap = Math.max(gap, t - last); last = t; }, 10);
  const t0 = performance.now();
  let image;
  try {
    image = await decodeLarge(z, cells, (done, total) => { bar.max = total; bar.value = done; seen.push(done / total); });
  } finally {
    clearInterval(tick);
  }
  const took = performance.now() - t0;
  paint($("large-canvas"), image, 1, 1, 1, [IS[0], px, px]);
  $("large-time").textContent = `${px}x${px} in ${seen.length} tiles: ${(took / 1000).toFixed(1)} s; ` +
    `the page's longest pause ${gap.toFixed(0)} ms`;
  api.lastLarge = { px, seed, ms: took, tiles: seen.length, progress: seen, maxGapMs: gap, proxy: ort.env.wasm.proxy,
                    image: Array.from(image) };
  return api.lastLarge;
}

// ------------------------------------------------------------------------------------------
// Samples and morphs
// ------------------------------------------------------------------------------------------

function latents(seed, n) {
  const g = V.normalRng(seed), z = new Float32Array(n * D);
  for (let i = 0; i < z.length; i++) z[i] = g();
  return z;
}

async function showSamples() {
  const seed = Number($("seed").value) || 0;
  const z = latents(seed, 16);
  const t0 = performance.now();
  const r = await decode(z, 16);
  $("samples-time").textContent = `16 samples decoded in one call: ${ms(performance.now() - t0)}`;
  paint($("samples"), r.probs.data, 16, 4);
}

async function showMorph() {
  const seed = Number($("seed").value) || 0;
  const ab = latents(1000 + seed, 2);
  const a = Array.from(ab.slice(0, D)), b = Array.from(ab.slice(D));
  const steps = 10, z = new Float32Array(steps * D);
  for (let i = 0; i < steps; i++) z.set(V.slerp(a, b, i / (steps - 1)), i * D);
  const t0 = performance.now();
  const r = await decode(z, steps);
  $("morph-time").textContent = `${steps} frames (slerp) in one call: ${ms(performance.now() - t0)}`;
  paint($("morph"), r.probs.data, steps, steps);
}

// ------------------------------------------------------------------------------------------
// The drawing pad
// ------------------------------------------------------------------------------------------

let ink, padCtx, scoring = false, again = false;

function padShow() {
  const size = config.pad.size, img = padCtx.createImageData(size, size), u8 = V.toUint8(ink);
  for (let i = 0; i < u8.length; i++) {
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = u8[i];
    img.data[4 * i + 3] = 255;
  }
  padCtx.putImageData(img, 0, 0);
}

function padPoint(e) {
  const c = $("pad"), r = c.getBoundingClientRect();
  return [((e.clientX - r.left) * c.width) / r.width, ((e.clientY - r.top) * c.height) / r.height];
}

function padInput() {
  return V.preprocess(V.toUint8(ink), config.pad.size, config.pad.size);
}

async function padScore() {
  if (scoring) { again = true; return; }
  scoring = true;
  try {
    do {
      again = false;
      const x = padInput();
      paint($("pad-input"), x, 1, 1);
      if (!V.hasInk(x)) {
        api.lastScore = null;
        $("score").textContent = "–";
        $("verdict").textContent = "draw a digit";
        $("score-time").textContent = "";
        continue;
      }
      const t0 = performance.now();
      const { score: s, mu } = await score(x);
      const rec = await decode(new Float32Array(mu), 1);
      const dt = performance.now() - t0;
      paint($("pad-recon"), rec.probs.data, 1, 1);
      api.lastScore = s;
      api.lastInput = Array.from(x);
      $("score").textContent = s.toFixed(1);
      $("verdict").textContent = V.verdict(s, config.score.range);
      $("score-time").textContent = `score + reconstruction: ${ms(dt)} (${config.score.draws.length + 2} graph runs)`;
      placeMarker(s);
    } while (again);
  } finally {
    scoring = false;
  }
}

function placeMarker(s) {
  const p = config.score.range && config.score.range.percentiles;
  if (!p) return;
  const lo = p["1"], hi = p["99"] + (p["99"] - p["1"]) * 0.5;
  const f = Math.min(1, Math.max(0, (s - lo) / (hi - lo)));
  $("marker").style.left = `${(100 * f).toFixed(1)}%`;
  $("marker").hidden = false;
}

function setupPad() {
  const c = $("pad"), size = config.pad.size;
  c.width = c.height = size;
  padCtx = c.getContext("2d");
  ink = new Float64Array(size * size);
  padShow();
  paint($("pad-input"), new Float32Array(P), 1, 1);
  paint($("pad-recon"), new Float32Array(P), 1, 1);
  let drawing = false;
  c.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    c.setPointerCapture(e.pointerId);
    drawing = true;
    const p = padPoint(e);
    api.strokes.push([p]);
    V.drawSegment(ink, size, p[0], p[1], p[0], p[1], config.pad.stroke);
    padShow();
  });
  c.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    const s = api.strokes[api.strokes.length - 1], q = s[s.length - 1], p = padPoint(e);
    s.push(p);
    V.drawSegment(ink, size, q[0], q[1], p[0], p[1], config.pad.stroke);
    padShow();
    padScore();
  });
  const end = () => { if (drawing) { drawing = false; padScore(); } };
  c.addEventListener("pointerup", end);
  c.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", () => {
    api.strokes.length = 0;
    ink.fill(0);
    padShow();
    padScore();
  });
  $("save").addEventListener("click", () => {
    const a = document.createElement("a");
    a.download = "digit.png";
    a.href = c.toDataURL("image/png");
    a.click();
  });
}

// ------------------------------------------------------------------------------------------
// An uploaded image: reconstructed and scored (any model)
// ------------------------------------------------------------------------------------------

let lastUpload = null;

/** An image file's pixels -> the model's input: MNIST framing for digit-style models (as the pad),
 * else resized to W x H by the canvas and converted to grey (ITU-R 601 luma, as pillow) or RGB. */
async function fileInput(file) {
  const bmp = await createImageBitmap(file);
  const [c, h, w] = IS;
  const full = !config.pad ? null : new OffscreenCanvas(bmp.width, bmp.height);
  const cv = full || new OffscreenCanvas(w, h), ctx = cv.getContext("2d");
  ctx.drawImage(bmp, 0, 0, cv.width, cv.height);
  const rgba = ctx.getImageData(0, 0, cv.width, cv.height).data;
  const grey = (i) => (rgba[4 * i] * 299 + rgba[4 * i + 1] * 587 + rgba[4 * i + 2] * 114) / 1000;
  if (full) {
    const g = new Uint8Array(cv.width * cv.height);
    for (let i = 0; i < g.length; i++) g[i] = Math.round(grey(i));
    return V.preprocess(g, cv.width, cv.height);
  }
  const x = new Float32Array(P);
  for (let i = 0; i < h * w; i++) {
    if (c === 1) x[i] = Math.round(grey(i)) / 255;
    else for (let ch = 0; ch < 3; ch++) x[ch * h * w + i] = rgba[4 * i + ch] / 255;
  }
  return x;
}

async function showUpload(x) {
  lastUpload = x;
  const t0 = performance.now();
  const { score: s, mu } = await score(x);
  const rec = await decode(new Float32Array(mu), 1);
  paint($("upload-input"), x, 1, 1);
  paint($("upload-recon"), rec.probs.data, 1, 1);
  $("upload-score").textContent = `${s.toFixed(1)} nats (-ELBO; ${ms(performance.now() - t0)})`;
  api.lastUpload = { score: s, input: Array.from(x), reconstruction: Array.from(rec.probs.data) };
  return api.lastUpload;
}

function setupUpload() {
  paint($("upload-input"), new Float32Array(P), 1, 1);
  paint($("upload-recon"), new Float32Array(P), 1, 1);
  $("upload").addEventListener("change", async (e) => {
    const file = e.target.files && e.target.files[0];
    if (!file) return;
    try {
      await showUpload(await fileInput(file));
    } catch (err) {
      fail(`could not read ${file.name}: ${err.message || err}`);
    }
  });
}

function showRange() {
  const r = config.score.range, p = r && r.percentiles;
  $("range").textContent = p
    ? `MNIST test digits (${r.images}): median ${p["50"].toFixed(0)}, 5–95% ${p["5"].toFixed(0)}–${p["95"].toFixed(0)}, 99% ${p["99"].toFixed(0)} nats`
    : config.pad ? "no test-set range was recorded when this site was built" : "";
}

// ------------------------------------------------------------------------------------------
// Start
// ------------------------------------------------------------------------------------------

async function useVariant(v) {
  await loadVariant(v);
  current = v;
  $("variant").value = v;
  const s = sessions[v];
  $("backend").textContent = `onnxruntime-web ${config.onnxruntime_web} · wasm · ${ort.env.wasm.numThreads} thread(s) · ` +
    `cross-origin isolated: ${self.crossOriginIsolated ? "yes" : "no"} · ${v} loaded in ${ms(s.loadMs)}`;
  await Promise.all([showSamples(), showMorph()]);
  if (api.strokes.length) await padScore();
  if (lastUpload) await showUpload(lastUpload);
}

async function main() {
  try {
    const r = await fetch("config.json");
    if (!r.ok) throw new Error(`could not fetch config.json: HTTP ${r.status}`);
    config = await r.json();
  } catch (e) {
    fail(`cannot start: ${e.message}`);
    return;
  }
  D = config.model.latent_dim;
  LS = config.model.latent_shape;
  IS = config.model.image_shape;
  P = IS[0] * IS[1] * IS[2];
  $("model").textContent = `${config.name} (${config.model.arch}, ${IS.join("x")} images, latent ${LS.join("x")})`;
  const sel = $("variant");
  for (const v of Object.keys(config.variants)) sel.add(new Option(v, v));
  sel.addEventListener("change", () => useVariant(sel.value).catch((e) => fail(e.message)));
  $("reroll").addEventListener("click", () => {
    $("seed").value = String((Number($("seed").value) || 0) + 1);
    Promise.all([showSamples(), showMorph()]).catch((e) => fail(e.message));
  });
  $("seed").addEventListener("change", () => Promise.all([showSamples(), showMorph()]).catch((e) => fail(e.message)));
  showRange();
  if (config.pad) setupPad();
  else $("draw").hidden = true;  // the pad draws digits: for one-channel digit-style models only
  setupUpload();
  // graphs of any size run in onnxruntime-web's worker: a large decode never blocks the page
  if (config.model.spatial_factor) ort.env.wasm.proxy = true;
  setupLarge();
  try {
    await useVariant(params.get("variant") || config.default_variant);
  } catch (e) {
    fail(e.message);
    return;
  }
  api.ready = true;
}

// The API the tests and `vae-edge bench --target web` drive.
Object.assign(api, {
  V,
  config: () => config,
  variants: () => Object.keys(config.variants),
  load: async (v) => (await loadVariant(v)).loadMs,
  setVariant: (v) => useVariant(v),
  decode: async (zRows, v = current) => {
    const gaussian = config.model.likelihood === "gaussian";  // its decoder gives the mean only
    const n = zRows.length, r = await decode(Float32Array.from(zRows.flat()), n, v, gaussian ? ["probs"] : ["logits", "probs"]);
    return { logits: gaussian ? null : Array.from(r.logits.data), probs: Array.from(r.probs.data) };
  },
  encode: async (xRows, v = current) => {
    const r = await encode(Float32Array.from(xRows.flat()), xRows.length, v);
    return { mu: Array.from(r.mu), logvar: Array.from(r.logvar) };
  },
  preprocess: (grey, w, h) => Array.from(V.preprocess(Uint8Array.from(grey), w, h)),
  score: async (x, v = current) => (await score(Float32Array.from(x), v)).score,
  pad: () => ({ strokes: api.strokes, input: Array.from(padInput()), score: api.lastScore }),
  /** An image given as the model's input (C*H*W values in [0, 1]): reconstructed and scored on the page. */
  upload: async (x) => showUpload(Float32Array.from(x)),
  uploaded: () => api.lastUpload || null,
  settled: async () => { while (scoring) await new Promise((r) => setTimeout(r, 5)); },
  /** One timed block: `calls` calls of a graph at batch `batch`; returns ms per call. */
  bench: async ({ variant, graph, batch, calls }) => {
    const s = await loadVariant(variant);
    const sess = graph === "encoder" ? s.enc : s.dec;
    const feeds = graph === "encoder"
      ? { x: new ort.Tensor("float32", new Float32Array(batch * P).fill(0.5), [batch, ...IS]) }
      : { z: new ort.Tensor("float32", latents(7, batch), [batch, ...LS]) };
    const fetches = graph === "encoder" ? ["mu", "logvar"] : ["probs"];
    const t0 = performance.now();
    for (let i = 0; i < calls; i++) await sess.run(feeds, fetches);
    return (performance.now() - t0) / calls;
  },
  isolated: () => self.crossOriginIsolated,
  /** A px x px image from a random latent (seed) or the latent z given (flat), in tiles:
   * { ms, tiles, progress, maxGapMs, image }. */
  large: (px, seed = 0, z = null) => showLarge(px, seed, z),
});

main();
