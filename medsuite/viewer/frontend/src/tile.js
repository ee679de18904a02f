// One reading plane on screen: its own small WebGL2 canvas (so a slice change redraws only this plane), the
// slice as a float texture windowed in the fragment shader (window/level is a uniform: no re-upload), the
// overlays composited into one premultiplied RGBA texture, and an HTML layer for the crosshair, labels,
// orientation markers, scale bar and ruler lines.

import { extractSlice, texelToVoxel, voxelToTexel } from "./volume.js";

const VS = `#version 300 es
in vec2 corner;
uniform vec4 rect;   // clip-space x0, y0 (bottom), x1, y1 (top)
out vec2 uv;
void main() {
  uv = vec2(corner.x, 1.0 - corner.y);  // texture row 0 at the top of the image
  gl_Position = vec4(mix(rect.x, rect.z, corner.x), mix(rect.y, rect.w, corner.y), 0.0, 1.0);
}`;

const FS = `#version 300 es
precision highp float;
in vec2 uv;
uniform sampler2D base;
uniform sampler2D overlay;
uniform vec2 window;   // width, level
uniform float hasOverlay;
out vec4 color;
void main() {
  float v = texture(base, uv).r;
  float g = clamp((v - (window.y - 0.5 * window.x)) / window.x, 0.0, 1.0);
  vec3 c = vec3(g);
  if (hasOverlay > 0.5) {
    vec4 o = texture(overlay, uv);   // premultiplied
    c = c * (1.0 - o.a) + o.rgb;
  }
  color = vec4(c, 1.0);
}`;

function compile(gl, type, src) {
  const sh = gl.createShader(type);
  gl.shaderSource(sh, src);
  gl.compileShader(sh);
  if (!gl.getShaderParameter(sh, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(sh) || "shader error");
  return sh;
}

function texture(gl, filter) {
  const t = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_2D, t);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, filter);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, filter);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
  return t;
}

function div(cls, parent) {
  const d = document.createElement("div");
  d.className = cls;
  parent.append(d);
  return d;
}

export class Tile {
  constructor(stage, name) {
    this.name = name;
    this.box = div("tile", stage);
    this.box.dataset.plane = name;
    this.canvas = document.createElement("canvas");
    this.canvas.className = "tile-canvas";
    this.canvas.dataset.plane = name;
    this.box.append(this.canvas);
    this.layer = div("tile-layer", this.box);
    this.label = div("tile-label", this.layer);
    this.label.dataset.plane = name;
    this.badge = div("badge interp", this.layer);
    this.markers = ["left", "right", "top", "bottom"].map((side) => {
      const m = div(`marker ${side}`, this.layer);
      return m;
    });
    this.hline = [div("xh h", this.layer), div("xh h", this.layer)];
    this.vline = [div("xh v", this.layer), div("xh v", this.layer)];
    this.scalebar = div("scalebar", this.layer);
    this.scaleText = document.createElement("span");
    this.scalebar.append(this.scaleText);
    this.svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    this.svg.setAttribute("class", "ruler");
    this.layer.append(this.svg);
    const gl = this.canvas.getContext("webgl2", { antialias: false, depth: false, stencil: false, alpha: false,
      premultipliedAlpha: false, preserveDrawingBuffer: false, powerPreference: "high-performance" });
    if (!gl) throw new Error("WebGL2 is not available in this browser");
    this.gl = gl;
    this.floatLinear = !!gl.getExtension("OES_texture_float_linear");
    const prog = gl.createProgram();
    gl.attachShader(prog, compile(gl, gl.VERTEX_SHADER, VS));
    gl.attachShader(prog, compile(gl, gl.FRAGMENT_SHADER, FS));
    gl.bindAttribLocation(prog, 0, "corner");
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog) || "link error");
    gl.useProgram(prog);
    this.u = Object.fromEntries(["rect", "base", "overlay", "window", "hasOverlay"].map((k) => [k, gl.getUniformLocation(prog, k)]));
    gl.uniform1i(this.u.base, 0);
    gl.uniform1i(this.u.overlay, 1);
    const buf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, buf);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([0, 0, 1, 0, 0, 1, 1, 1]), gl.STATIC_DRAW);
    gl.enableVertexAttribArray(0);
    gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    this.baseTex = texture(gl, this.floatLinear ? gl.LINEAR : gl.NEAREST);
    this.ovlTex = texture(gl, gl.NEAREST);
    this.rect = { left: 0, top: 0, width: 0, height: 0 };
    this.zoom = 1;
    this.pan = [0, 0];
    this.slice = -1;
    this.hasOverlay = false;
    this.buf = null;
    this.ovl = null;
  }

  setPlane(vol, pl) {
    this.vol = vol;
    this.pl = pl;
    this.buf = new Float32Array(pl.nu * pl.nv);
    this.ovl = new Uint8Array(pl.nu * pl.nv * 4);
    this.slice = -1;
    const [l, r, t, b] = pl.edges;
    [this.markers[0].textContent, this.markers[1].textContent, this.markers[2].textContent, this.markers[3].textContent] = [l, r, t, b];
  }

  place(left, top, width, height, visible) {
    this.rect = { left, top, width, height };
    Object.assign(this.box.style, { left: `${left}px`, top: `${top}px`, width: `${width}px`, height: `${height}px`,
      display: visible ? "block" : "none" });
    this.visible = visible;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(width * dpr));
    const h = Math.max(1, Math.round(height * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
  }

  /** CSS pixels per mm and the image rectangle (CSS px, relative to the tile) at the current zoom and pan. */
  frame() {
    const { width, height } = this.rect;
    const pl = this.pl;
    const wmm = pl.nu * pl.su;
    const hmm = pl.nv * pl.sv;
    const pxPerMm = this.zoom * Math.min(width / wmm, height / hmm);
    const w = wmm * pxPerMm;
    const h = hmm * pxPerMm;
    const left = (width - w) / 2 + this.pan[0];
    const top = (height - h) / 2 + this.pan[1];
    return { pxPerMm, left, top, w, h };
  }

  /** Texel (fractional) under tile point (x, y) in CSS px. */
  texelAt(x, y) {
    const f = this.frame();
    return [((x - f.left) / f.w) * this.pl.nu, ((y - f.top) / f.h) * this.pl.nv];
  }

  /** Tile point (CSS px) of texel (x, y). */
  pointAt(tx, ty) {
    const f = this.frame();
    return [f.left + (tx / this.pl.nu) * f.w, f.top + (ty / this.pl.nv) * f.h];
  }

  /** Upload slice `s` (and its overlay when `overlays` is given) if it is not the one shown. */
  load(s, overlays, force = false) {
    if (!force && s === this.slice) return false;
    const gl = this.gl;
    extractSlice(this.vol, this.pl, s, this.buf);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, this.baseTex);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.R32F, this.pl.nu, this.pl.nv, 0, gl.RED, gl.FLOAT, this.buf);
    this.slice = s;
    this.loadOverlay(overlays);
    return true;
  }

  /** Composite the visible overlays on this slice into one premultiplied RGBA texture. */
  loadOverlay(overlays) {
    const gl = this.gl;
    const any = overlays && overlays.some((o) => o.visible);
    this.hasOverlay = false;
    if (!any) return;
    const out = this.ovl;
    out.fill(0);
    const pl = this.pl;
    let touched = false;
    for (const ov of overlays) {
      if (!ov.visible) continue;
      touched = compositeOverlay(out, this.vol, pl, this.slice, ov) || touched;
    }
    if (!touched) return;
    gl.activeTexture(gl.TEXTURE1);
    gl.bindTexture(gl.TEXTURE_2D, this.ovlTex);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, pl.nu, pl.nv, 0, gl.RGBA, gl.UNSIGNED_BYTE, out);
    this.hasOverlay = true;
  }

  draw(window) {
    if (!this.visible || !this.pl) return;
    const gl = this.gl;
    const { width, height } = this.rect;
    const f = this.frame();
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.clearColor(0, 0, 0, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    const x0 = (f.left / width) * 2 - 1;
    const x1 = ((f.left + f.w) / width) * 2 - 1;
    const y1 = 1 - (f.top / height) * 2;
    const y0 = 1 - ((f.top + f.h) / height) * 2;
    gl.uniform4f(this.u.rect, x0, y0, x1, y1);
    gl.uniform2f(this.u.window, window[0], window[1]);
    gl.uniform1f(this.u.hasOverlay, this.hasOverlay ? 1 : 0);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, this.baseTex);
    gl.activeTexture(gl.TEXTURE1);
    gl.bindTexture(gl.TEXTURE_2D, this.ovlTex);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }

  /** Crosshair lines (with a gap around the point), slice label and scale bar for crosshair voxel c. */
  decorate(c, interpolated, rulers) {
    if (!this.visible || !this.pl) return;
    const pl = this.pl;
    const [tx, ty] = voxelToTexel(pl, c);
    const [px, py] = this.pointAt(tx, ty);
    const { width, height } = this.rect;
    const gap = 12;
    const set = (el, l, t, w, h) => {
      const show = w > 0 && h > 0;
      el.style.display = show ? "block" : "none";
      if (show) Object.assign(el.style, { left: `${l}px`, top: `${t}px`, width: `${w}px`, height: `${h}px` });
    };
    set(this.hline[0], 0, py, Math.max(0, px - gap), 1);
    set(this.hline[1], px + gap, py, Math.max(0, width - px - gap), 1);
    set(this.vline[0], px, 0, 1, Math.max(0, py - gap));
    set(this.vline[1], px, py + gap, 1, Math.max(0, height - py - gap));
    const s = this.slice;
    this.label.textContent = `${pl.name[0].toUpperCase()}${pl.name.slice(1)}  ${s + 1}/${pl.ns}`;
    const interp = interpolated && pl.n === 2 && interpolated.has(s);
    this.badge.style.display = interp ? "block" : "none";
    if (interp) {
      this.badge.textContent = `INTERPOLATED slice ${s + 1}/${pl.ns}: not acquired`;  // numbered as the label, from 1
      this.badge.dataset.interpolated = String(s);
    }
    const f = this.frame();
    const mm = niceLength(f.pxPerMm, Math.min(130, width / 4));
    const len = mm * f.pxPerMm;
    Object.assign(this.scalebar.style, { left: `${width - len - 16}px`, top: `${height - 24}px`, width: `${len}px` });
    this.scalebar.dataset.mm = String(mm);
    this.scaleText.textContent = `${mm} mm`;
    this.drawRulers(rulers);
  }

  drawRulers(rulers) {
    const svg = this.svg;
    while (svg.firstChild) svg.firstChild.remove();
    for (const r of rulers) {
      if (r.plane !== this.name || r.slice !== this.slice) continue;
      const [ax, ay] = this.pointAt(r.a[0], r.a[1]);
      const [bx, by] = this.pointAt(r.b[0], r.b[1]);
      const line = document.createElementNS("http://www.w3.org/2000/svg", "line");
      Object.entries({ x1: ax, y1: ay, x2: bx, y2: by }).forEach(([k, v]) => line.setAttribute(k, String(v)));
      const text = document.createElementNS("http://www.w3.org/2000/svg", "text");
      text.setAttribute("x", String((ax + bx) / 2 + 6));
      text.setAttribute("y", String((ay + by) / 2 - 6));
      text.textContent = `${r.mm.toFixed(1)} mm`;
      text.setAttribute("data-mm", r.mm.toFixed(2));
      svg.append(line, text);
    }
  }
}

const NICE = [1, 2, 5, 10, 20, 50, 100, 200];

/** A round length in mm whose bar is at most about `targetPx` long at `pxPerMm`. */
export function niceLength(pxPerMm, targetPx = 110) {
  const want = targetPx / pxPerMm;
  let best = NICE[0];
  for (const n of NICE) if (n <= want) best = n;
  return best;
}

/** Draw overlay `ov` (a Vol with a colour rule) on slice s of plane pl of `vol` into `out`, nearest voxel. */
function compositeOverlay(out, vol, pl, s, ov) {
  // overlay voxel = inv(A_ov) * A_base * base voxel: affine, so step it along the rows
  const M = mul4(ov.vol.inv, vol.affine);
  const at = (c) => [M[0] * c[0] + M[1] * c[1] + M[2] * c[2] + M[3], M[4] * c[0] + M[5] * c[1] + M[6] * c[2] + M[7],
    M[8] * c[0] + M[9] * c[1] + M[10] * c[2] + M[11]];
  const o00 = at(texelToVoxel(pl, s, 0, 0));
  const o10 = at(texelToVoxel(pl, s, 1, 0));
  const o01 = at(texelToVoxel(pl, s, 0, 1));
  const dx = [o10[0] - o00[0], o10[1] - o00[1], o10[2] - o00[2]];
  const dy = [o01[0] - o00[0], o01[1] - o00[1], o01[2] - o00[2]];
  const [ox, oy, oz] = ov.vol.dims;
  const data = ov.vol.data;
  const color = ov.color;
  const { nu, nv } = pl;
  let touched = false;
  const dims = [ox, oy, oz];
  for (let y = 0; y < nv; y++) {
    const f0 = [o00[0] + dy[0] * y, o00[1] + dy[1] * y, o00[2] + dy[2] * y];
    // the columns of this row that fall inside the overlay (rounding to voxel centres)
    let lo = 0;
    let hi = nu - 1;
    for (let a = 0; a < 3 && lo <= hi; a++) {
      const lower = -0.5 - f0[a];
      const upper = dims[a] - 0.5 - f0[a];
      if (Math.abs(dx[a]) < 1e-9) {
        if (lower > 0 || upper <= 0) hi = -1;
        continue;
      }
      let x0 = lower / dx[a];
      let x1 = upper / dx[a];
      if (x0 > x1) [x0, x1] = [x1, x0];
      lo = Math.max(lo, Math.ceil(x0 - 1e-9));
      hi = Math.min(hi, Math.floor(x1 + 1e-9));
    }
    let p = (y * nu + lo) * 4;
    for (let x = lo; x <= hi; x++, p += 4) {
      const i = Math.round(f0[0] + dx[0] * x);
      const j = Math.round(f0[1] + dx[1] * x);
      const k = Math.round(f0[2] + dx[2] * x);
      if (i < 0 || j < 0 || k < 0 || i >= ox || j >= oy || k >= oz) continue;
      const rgba = color(data[i + ox * (j + oy * k)]);
      if (!rgba) continue;
      const a = rgba[3];
      out[p] = out[p] * (1 - a) + rgba[0] * a;
      out[p + 1] = out[p + 1] * (1 - a) + rgba[1] * a;
      out[p + 2] = out[p + 2] * (1 - a) + rgba[2] * a;
      out[p + 3] = out[p + 3] * (1 - a) + 255 * a;
      touched = true;
    }
  }
  return touched;
}

function mul4(a, b) {
  const r = new Array(16).fill(0);
  for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) for (let k = 0; k < 4; k++) r[i * 4 + j] += a[i * 4 + k] * b[k * 4 + j];
  return r;
}
