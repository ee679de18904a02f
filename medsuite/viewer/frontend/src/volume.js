// A scan (or an overlay) in the browser: the NIfTI-1 voxels as a typed array, their RAS affine, and the three
// reading planes (axial, coronal, sagittal) laid out on screen in radiological convention.

import { apply4, invert4 } from "./geometry.js";

const TYPES = { 2: Uint8Array, 4: Int16Array, 8: Int32Array, 16: Float32Array, 64: Float64Array, 256: Int8Array, 512: Uint16Array };

/** Parse an uncompressed NIfTI-1 file (the payloads medsuite sends: little-endian, sform set). */
export function readNifti(buffer) {
  const dv = new DataView(buffer);
  if (dv.getInt32(0, true) !== 348) throw new Error("not a little-endian NIfTI-1 file");
  const dims = [1, 2, 3].map((i) => dv.getInt16(40 + 2 * i, true));
  const datatype = dv.getInt16(70, true);
  const voxOffset = Math.round(dv.getFloat32(108, true));
  const slope = dv.getFloat32(112, true) || 1;
  const inter = dv.getFloat32(116, true) || 0;
  const affine = [];
  for (let r = 0; r < 3; r++) for (let c = 0; c < 4; c++) affine.push(dv.getFloat32(280 + 16 * r + 4 * c, true));
  affine.push(0, 0, 0, 1);
  const Ctor = TYPES[datatype];
  if (!Ctor) throw new Error(`NIfTI datatype ${datatype} is not supported`);
  if (voxOffset % Ctor.BYTES_PER_ELEMENT) throw new Error("misaligned NIfTI voxel offset");
  const n = dims[0] * dims[1] * dims[2];
  if (voxOffset + n * Ctor.BYTES_PER_ELEMENT > buffer.byteLength) throw new Error("NIfTI file is truncated");
  return new Vol(dims, affine, new Ctor(buffer, voxOffset, n), slope, inter);
}

/** Gunzip with the browser's own DecompressionStream (native code). */
export async function gunzip(u8) {
  if (!(u8[0] === 0x1f && u8[1] === 0x8b)) return u8.slice().buffer;
  const stream = new Blob([u8]).stream().pipeThrough(new DecompressionStream("gzip"));
  return await new Response(stream).arrayBuffer();
}

export class Vol {
  constructor(dims, affine, data, slope = 1, inter = 0) {
    this.dims = dims;
    this.affine = affine;
    this.inv = invert4(affine);
    this.data = data;
    this.slope = slope;
    this.inter = inter;
    this.strides = [1, dims[0], dims[0] * dims[1]];
    this.spacing = [0, 1, 2].map((a) => Math.hypot(affine[a], affine[4 + a], affine[8 + a]));
  }

  /** The stored value at integer voxel (i, j, k), scaled; NaN outside. */
  value(i, j, k) {
    const [nx, ny, nz] = this.dims;
    if (i < 0 || j < 0 || k < 0 || i >= nx || j >= ny || k >= nz) return NaN;
    return this.data[i + nx * (j + ny * k)] * this.slope + this.inter;
  }

  toWorld(ijk) {
    return apply4(this.affine, ijk);
  }

  toVoxel(ras) {
    return apply4(this.inv, ras);
  }
}

// plane -> the world axis it is normal to (RAS index) and, on screen, the world directions of +x (rightwards)
// and +y (downwards): radiological convention, patient's right on the left; sagittal with anterior on the left.
const PLANE_AXES = {
  axial: { normal: 2, right: [0, -1], down: [1, -1], edges: ["R", "L", "A", "P"] },
  coronal: { normal: 1, right: [0, -1], down: [2, -1], edges: ["R", "L", "S", "I"] },
  sagittal: { normal: 0, right: [1, -1], down: [2, -1], edges: ["A", "P", "S", "I"] },
};

/** How plane `name` of volume `vol` maps onto the screen: the native axis through the plane (`n`), the native
 *  axes along screen x (`u`) and y (`v`), whether they run backwards (`flipU`, `flipV`), sizes and mm. */
export function planeLayout(vol, name) {
  const spec = PLANE_AXES[name];
  const A = vol.affine;
  const pick = (world, exclude) => {
    let best = -1;
    for (let a = 0; a < 3; a++) {
      if (exclude.includes(a)) continue;
      if (best < 0 || Math.abs(A[world * 4 + a]) > Math.abs(A[world * 4 + best])) best = a;
    }
    return best;
  };
  const n = pick(spec.normal, []);
  const u = pick(spec.right[0], [n]);
  const v = [0, 1, 2].find((a) => a !== n && a !== u);
  const flipU = Math.sign(A[spec.right[0] * 4 + u]) * spec.right[1] < 0;
  const flipV = Math.sign(A[spec.down[0] * 4 + v] || 1) * spec.down[1] < 0;
  return {
    name, n, u, v, flipU, flipV,
    nu: vol.dims[u], nv: vol.dims[v], ns: vol.dims[n],
    su: vol.spacing[u], sv: vol.spacing[v],
    normalSign: Math.sign(A[spec.normal * 4 + n]) || 1,
    edges: spec.edges,
  };
}

/** The plane's slice `s` as float32 rows (screen order: row 0 at the top, column 0 at the left). */
export function extractSlice(vol, pl, s, out) {
  const { nu, nv, u, v, n, flipU, flipV } = pl;
  const st = vol.strides;
  const data = vol.data;
  const su = flipU ? -st[u] : st[u];
  const base = s * st[n] + (flipU ? (nu - 1) * st[u] : 0);
  const slope = vol.slope;
  const inter = vol.inter;
  let o = 0;
  for (let y = 0; y < nv; y++) {
    let idx = base + (flipV ? nv - 1 - y : y) * st[v];
    if (slope === 1 && inter === 0) {
      for (let x = 0; x < nu; x++, idx += su) out[o++] = data[idx];
    } else {
      for (let x = 0; x < nu; x++, idx += su) out[o++] = data[idx] * slope + inter;
    }
  }
  return out;
}

/** Native voxel (i, j, k) of screen texel (x, y) of slice s of plane pl. */
export function texelToVoxel(pl, s, x, y) {
  const c = [0, 0, 0];
  c[pl.n] = s;
  c[pl.u] = pl.flipU ? pl.nu - 1 - x : x;
  c[pl.v] = pl.flipV ? pl.nv - 1 - y : y;
  return c;
}

/** Screen texel (x, y) (fractional, texel centres at +0.5) of native voxel c on plane pl. */
export function voxelToTexel(pl, c) {
  const x = pl.flipU ? pl.nu - 1 - c[pl.u] : c[pl.u];
  const y = pl.flipV ? pl.nv - 1 - c[pl.v] : c[pl.v];
  return [x + 0.5, y + 0.5];
}
