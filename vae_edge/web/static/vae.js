// vae-edge's numerics for the browser: the JavaScript twin of the Python runtime's
// preprocessing (runtime/images.py: draw_strokes, ink_map's clean-drawing path, frame_digit)
// and scoring (runtime/mathops.py, VAERuntime.score). No DOM, no onnxruntime: app.js wires the
// page to these functions, and tests/test_web.py checks them against Python on the same inputs.

// ------------------------------------------------------------------------------------------
// Drawing: strokes -> ink, with the rule of runtime/images.py draw_strokes
// ------------------------------------------------------------------------------------------

/** Ink one segment into `ink` (Float64Array size*size, values in [0, 1], max-combined):
 * coverage = clip(width/2 + 0.5 - distance from the pixel centre to the segment, 0, 1). */
export function drawSegment(ink, size, x0, y0, x1, y1, width) {
  const r = width / 2;
  const loX = Math.max(0, Math.floor(Math.min(x0, x1) - r - 1));
  const hiX = Math.min(size, Math.ceil(Math.max(x0, x1) + r + 1));
  const loY = Math.max(0, Math.floor(Math.min(y0, y1) - r - 1));
  const hiY = Math.min(size, Math.ceil(Math.max(y0, y1) + r + 1));
  const dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
  for (let py = loY; py < hiY; py++) {
    const cy = py + 0.5;
    for (let px = loX; px < hiX; px++) {
      const cx = px + 0.5;
      let t = len2 === 0 ? 0 : ((cx - x0) * dx + (cy - y0) * dy) / len2;
      t = t < 0 ? 0 : t > 1 ? 1 : t;
      const d = Math.hypot(cx - (x0 + t * dx), cy - (y0 + t * dy));
      let c = r + 0.5 - d;
      c = c < 0 ? 0 : c > 1 ? 1 : c;
      const i = py * size + px;
      if (c > ink[i]) ink[i] = c;
    }
  }
}

/** Strokes (arrays of [x, y]) -> 8-bit grey ink (Uint8Array size*size), as draw_strokes. */
export function rasterize(strokes, size, width) {
  const ink = new Float64Array(size * size);
  for (const s of strokes) {
    if (s.length === 0) continue;
    if (s.length === 1) drawSegment(ink, size, s[0][0], s[0][1], s[0][0], s[0][1], width);
    for (let i = 1; i < s.length; i++) drawSegment(ink, size, s[i - 1][0], s[i - 1][1], s[i][0], s[i][1], width);
  }
  return toUint8(ink);
}

export function toUint8(ink) {
  const out = new Uint8Array(ink.length);
  for (let i = 0; i < ink.length; i++) out[i] = Math.floor(ink[i] * 255 + 0.5);
  return out;
}

// ------------------------------------------------------------------------------------------
// Preprocessing: grey pixels -> the model's [1, 28, 28] input (runtime/images.py preprocess)
// ------------------------------------------------------------------------------------------

/** Python's round(): halves go to the even neighbour. */
export function roundHalfEven(v) {
  const f = Math.floor(v), d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

function median(values) { // numpy's median: the mean of the two middle values when the count is even
  const s = values.slice().sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** ink_map for clean drawings (a flat background): 8-bit grey (w*h) -> ink in [0, 1].
 * Light paper is inverted; the paper's value is subtracted; the ink is divided by its maximum.
 * Returns null for images that are not clean drawings (the photo path is Python-only). */
export function inkMapClean(grey, w, h) {
  const a = new Float64Array(w * h);
  for (let i = 0; i < a.length; i++) a[i] = grey[i] / 255;
  const border = () => {
    const b = [];
    for (let x = 0; x < w; x++) b.push(a[x], a[(h - 1) * w + x]);
    for (let y = 0; y < h; y++) b.push(a[y * w], a[y * w + w - 1]);
    return b;
  };
  if (median(border()) > 0.5) for (let i = 0; i < a.length; i++) a[i] = 1 - a[i];
  const paper = median(border());
  let flat = 0;
  for (let i = 0; i < a.length; i++) if (Math.abs(a[i] - paper) < 0.5 / 255) flat++;
  if (flat / a.length < 0.5) return null;
  let top = 0;
  for (let i = 0; i < a.length; i++) { a[i] = Math.max(0, a[i] - paper); top = Math.max(top, a[i]); }
  if (top <= 1e-3) return a.fill(0);
  for (let i = 0; i < a.length; i++) a[i] /= top;
  return a;
}

/** pillow's ImageFilter.MedianFilter(3) on 8-bit grey (edges replicated). */
export function median3(u8, w, h) {
  const out = new Uint8Array(w * h), win = new Array(9);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let k = 0;
      for (let dy = -1; dy <= 1; dy++) {
        const yy = Math.min(h - 1, Math.max(0, y + dy));
        for (let dx = -1; dx <= 1; dx++) win[k++] = u8[yy * w + Math.min(w - 1, Math.max(0, x + dx))];
      }
      out[y * w + x] = median(win);
    }
  }
  return out;
}

function lanczos(x) {
  const sinc = (v) => (v === 0 ? 1 : Math.sin(v * Math.PI) / (v * Math.PI));
  return -3 <= x && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

const PRECISION_BITS = 22; // pillow: 32 - 8 - 2

/** pillow's fixed-point coefficients for one axis (Resample.c precompute_coeffs + normalize). */
function coeffs(inSize, outSize) {
  const scale = inSize / outSize, filterscale = Math.max(scale, 1);
  const support = 3 * filterscale, ss = 1 / filterscale;
  const rows = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    const k = [];
    let ww = 0;
    for (let x = 0; x < xmax; x++) { const v = lanczos((x + xmin - center + 0.5) * ss); k.push(v); ww += v; }
    const kk = k.map((v) => {
      const n = ww !== 0 ? v / ww : v;
      return Math.trunc(n < 0 ? -0.5 + n * (1 << PRECISION_BITS) : 0.5 + n * (1 << PRECISION_BITS));
    });
    rows.push({ xmin, kk });
  }
  return rows;
}

function clip8(ss) {
  const v = Math.floor(ss / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

function passH(img, w, rows, nw) { // each row: w -> nw
  const hor = coeffs(w, nw), out = new Uint8Array(nw * rows);
  for (let y = 0; y < rows; y++) {
    for (let xx = 0; xx < nw; xx++) {
      const { xmin, kk } = hor[xx];
      let ss = 1 << (PRECISION_BITS - 1);
      for (let x = 0; x < kk.length; x++) ss += img[y * w + x + xmin] * kk[x];
      out[y * nw + xx] = clip8(ss);
    }
  }
  return out;
}

function passV(img, w, h, nh) { // each column: h -> nh
  const vert = coeffs(h, nh), out = new Uint8Array(w * nh);
  for (let yy = 0; yy < nh; yy++) {
    const { xmin, kk } = vert[yy];
    for (let x = 0; x < w; x++) {
      let ss = 1 << (PRECISION_BITS - 1);
      for (let y = 0; y < kk.length; y++) ss += img[(y + xmin) * w + x] * kk[y];
      out[yy * w + x] = clip8(ss);
    }
  }
  return out;
}

/** Lanczos resize of an 8-bit grey image as runtime/images.py does it: pillow's horizontal pass,
 * rounded to 8 bits, then its vertical pass (two one-axis pillow resizes: the same on every
 * pillow version, whereas pillow >= 13 may reorder the passes of a single two-axis resize). */
export function resizeLanczos(u8, w, h, nw, nh) {
  const tmp = nw !== w ? passH(u8, w, h, nw) : u8;
  return nh !== h ? passV(tmp, nw, h, nh) : tmp;
}

/** frame_digit: ink in [0, 1] (w*h) -> Float32Array(784): crop to the ink, longer side to 20 px,
 * centred by mass in 28x28. Also returns the crop box for drawing it on the page. */
export function frameDigit(a, w, h) {
  const out = new Float32Array(784);
  const u8 = new Uint8Array(w * h);
  let any = false;
  for (let i = 0; i < a.length; i++) { u8[i] = roundHalfEven(a[i] * 255); any = any || a[i] > 0; }
  if (!any) return { x: out, box: null };
  const bbox = (pred) => {
    let r0 = h, r1 = -1, c0 = w, c1 = -1;
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) if (pred(y * w + x)) {
      r0 = Math.min(r0, y); r1 = Math.max(r1, y); c0 = Math.min(c0, x); c1 = Math.max(c1, x);
    }
    return r1 < 0 ? null : { r0, r1, c0, c1 };
  };
  const med = median3(u8, w, h);
  const box = bbox((i) => med[i] / 255 > 0.1) || bbox((i) => a[i] > 0.1);
  if (!box) return { x: out, box: null };
  const ch = box.r1 - box.r0 + 1, cw = box.c1 - box.c0 + 1;
  const crop = new Uint8Array(ch * cw);
  for (let y = 0; y < ch; y++) for (let x = 0; x < cw; x++) crop[y * cw + x] = u8[(y + box.r0) * w + x + box.c0];
  const scale = 20 / Math.max(ch, cw);
  const nh = Math.max(1, roundHalfEven(ch * scale)), nw = Math.max(1, roundHalfEven(cw * scale));
  const small = resizeLanczos(crop, cw, ch, nw, nh);
  let total = 0, my = 0, mx = 0; // integer sums: the same bits as numpy's int64 ones
  for (let y = 0; y < nh; y++) for (let x = 0; x < nw; x++) {
    const v = small[y * nw + x];
    total += v; my += v * y; mx += v * x;
  }
  if (total === 0) return { x: out, box: null };
  const top = Math.min(Math.max(roundHalfEven(14 - my / total), 0), 28 - nh);
  const left = Math.min(Math.max(roundHalfEven(14 - mx / total), 0), 28 - nw);
  for (let y = 0; y < nh; y++) for (let x = 0; x < nw; x++) out[(y + top) * 28 + x + left] = small[y * nw + x] / 255;
  return { x: out, box };
}

/** A clean grey drawing (w*h, 8-bit) -> the model's input, Float32Array(784). */
export function preprocess(grey, w, h) {
  const a = inkMapClean(grey, w, h);
  if (a === null) throw new Error("not a clean drawing (the photo clean-up runs in Python only)");
  return frameDigit(a, w, h).x;
}

/** has_ink: at least 0.5% of the pixels above 0.2 (blank pads score as "normal"). */
export function hasInk(x) {
  let n = 0;
  for (let i = 0; i < x.length; i++) if (x[i] > 0.2) n++;
  return n / x.length >= 0.005;
}

// ------------------------------------------------------------------------------------------
// Scoring (runtime/mathops.py) and latents
// ------------------------------------------------------------------------------------------

/** -log Bernoulli(x; sigmoid(logits)), summed over the pixels of one image. */
export function bceWithLogits(logits, x, offset = 0) {
  let s = 0;
  for (let i = 0; i < x.length; i++) {
    const l = logits[offset + i];
    s += Math.max(l, 0) - l * x[i] + Math.log1p(Math.exp(-Math.abs(l)));
  }
  return s;
}

export function klToPrior(mu, logvar) {
  let s = 0;
  for (let i = 0; i < mu.length; i++) s += 1 + logvar[i] - mu[i] * mu[i] - Math.exp(logvar[i]);
  return -0.5 * s;
}

/** The latents the page's -ELBO decodes: z_k = mu + exp(logvar/2) * draws[k], in float32. */
export function scoreLatents(mu, logvar, draws) {
  const d = mu.length, z = new Float32Array(draws.length * d);
  for (let k = 0; k < draws.length; k++) {
    for (let j = 0; j < d; j++) {
      const std = Math.fround(Math.exp(Math.fround(0.5 * logvar[j])));
      z[k * d + j] = Math.fround(mu[j] + Math.fround(std * draws[k][j]));
    }
  }
  return z;
}

/** -ELBO in nats: the mean over the draws of reconstruction NLL + KL (= rt.score(x, seed=0, elbo_samples=K)). */
export function negElbo(x, mu, logvar, logits) {
  const k = logits.length / x.length, kl = klToPrior(mu, logvar);
  let total = 0;
  for (let i = 0; i < k; i++) total += bceWithLogits(logits, x, i * x.length) + kl;
  return total / k;
}

/** -ELBO of a Gaussian decoder: -log N(x; mean, sigma^2 I) (runtime/mathops.py gaussian_nll) + KL,
 * the mean over the draws (means: the decoder's outputs for each draw, one after the other). */
export function negElboGaussian(x, mu, logvar, means, sigma, logSigmas = null) {
  const k = means.length / x.length, kl = klToPrior(mu, logvar), half = 0.5 * Math.log(2 * Math.PI);
  let total = 0;
  for (let i = 0; i < k; i++) {
    let s = 0;
    for (let j = 0; j < x.length; j++) {
      const ls = logSigmas ? logSigmas[i * x.length + j] : Math.log(sigma);
      const d = (x[j] - means[i * x.length + j]) * Math.exp(-ls);
      s += 0.5 * d * d + ls + half;
    }
    total += s + kl;
  }
  return total / k;
}

const LOG_SCALE_MIN = -7.0;  // runtime/mathops.py: the discretized logistic's log-scale floor
const CONTEXT = [[0, -1], [-1, -1], [-1, 0], [-1, 1]];  // logistic-ar's neighbours (dy, dx), mathops.CONTEXT

function logAddExp0(v) { return v > 0 ? v + Math.log1p(Math.exp(-v)) : Math.log1p(Math.exp(v)); }  // log(1 + e^v)

/** A logistic-ar decoder's mean of every value of one image (mathops.context_mean, in its order):
 * probs + sum_k w_k * (x - probs) at neighbour k (0 outside the image); shape [C, H, W]. */
export function contextMean(probs, weights, x, shape, offset = 0) {
  const [c, h, w] = shape, n = c * h * w, mean = new Float64Array(n), r = new Float64Array(n);
  for (let j = 0; j < n; j++) { r[j] = x[j] - probs[offset + j]; mean[j] = probs[offset + j]; }
  CONTEXT.forEach(([dy, dx], k) => {
    for (let ch = 0; ch < c; ch++) for (let i = 0; i < h; i++) for (let jj = 0; jj < w; jj++) {
      const ii = i + dy, jx = jj + dx, at = (ch * h + i) * w + jj;
      const nb = ii >= 0 && ii < h && jx >= 0 && jx < w ? r[(ch * h + ii) * w + jx] : 0;
      mean[at] = mean[at] + weights[offset * 4 + (k * c + ch) * h * w + i * w + jj] * nb;
    }
  });
  return mean;
}

/** -log P(x) of one image's 8-bit values under a discretized logistic per value (mathops.logistic_nll). */
export function logisticNll(mean, logScales, x, offset = 0) {
  let s = 0;
  for (let j = 0; j < x.length; j++) {
    const ls = Math.max(logScales[offset + j], LOG_SCALE_MIN), invS = Math.exp(-ls), c = x[j] - mean[j];
    const plus = invS * (c + 0.5 / 255), minus = invS * (c - 0.5 / 255);
    let logP;
    if (x[j] < 0.5 / 255) logP = plus - logAddExp0(plus);
    else if (x[j] > 1 - 0.5 / 255) logP = -logAddExp0(minus);
    else {
      const delta = Math.exp(-logAddExp0(-plus)) - Math.exp(-logAddExp0(-minus)), mid = invS * c;
      logP = delta > 1e-5 ? Math.log(Math.max(delta, 1e-12)) : mid - ls - 2 * logAddExp0(mid) - Math.log(255);
    }
    s -= logP;
  }
  return s;
}

/** -ELBO of an 8-bit (logistic or logistic-ar) decoder: the mean over the draws of the values'
 * NLL + KL (probs, logScales and, for logistic-ar, context: the decoder's outputs per draw). */
export function negElboLogistic(x, mu, logvar, probs, logScales, context, shape) {
  const k = probs.length / x.length, kl = klToPrior(mu, logvar);
  let total = 0;
  for (let i = 0; i < k; i++) {
    const off = i * x.length;
    const mean = context ? contextMean(probs, context, x, shape, off) : probs.subarray(off, off + x.length);
    total += logisticNll(mean, logScales, x, off) + kl;
  }
  return total / k;
}

/** Where a score falls in the test set's range: a short verdict. */
export function verdict(score, range) {
  const p = range && range.percentiles;
  if (!p) return "";
  if (score <= p["95"]) return "typical of MNIST test digits";
  if (score <= p["99"]) return "unusual (above 95% of test digits)";
  return "very unusual (above 99% of test digits)";
}

/** A seeded standard-normal generator (mulberry32 + Box-Muller) for the page's samples. */
export function normalRng(seed) {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  let spare = null;
  return () => {
    if (spare !== null) { const v = spare; spare = null; return v; }
    let u = 0;
    while (u === 0) u = uniform();
    const r = Math.sqrt(-2 * Math.log(u)), th = 2 * Math.PI * uniform();
    spare = r * Math.sin(th);
    return r * Math.cos(th);
  };
}

/** Spherical interpolation (runtime slerp): straight lines through the Gaussian's shell. */
export function slerp(a, b, t) {
  const na = Math.hypot(...a), nb = Math.hypot(...b);
  let dot = 0;
  for (let i = 0; i < a.length; i++) dot += a[i] * b[i];
  const cos = na > 0 && nb > 0 ? Math.min(1, Math.max(-1, dot / (na * nb))) : 1;
  const omega = Math.acos(cos), so = Math.sin(omega);
  if (so < 1e-6) return a.map((v, i) => (1 - t) * v + t * b[i]);
  const wa = Math.sin((1 - t) * omega) / so, wb = Math.sin(t * omega) / so;
  return a.map((v, i) => wa * v + wb * b[i]);
}

export function sigmoid(v) {
  return 1 / (1 + Math.exp(-v));
}
