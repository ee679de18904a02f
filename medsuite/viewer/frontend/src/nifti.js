// Just enough NIfTI-1 to read the voxel values for the HU readout (NiiVue parses the file for display; this keeps
// the exact stored numbers, scaled by scl_slope/scl_inter, independent of NiiVue's internals).

const TYPES = { 2: Uint8Array, 4: Int16Array, 8: Int32Array, 16: Float32Array, 64: Float64Array, 256: Int8Array, 512: Uint16Array };

export function readNifti(buffer) {
  const dv = new DataView(buffer);
  const le = dv.getInt32(0, true) === 348;
  if (!le && dv.getInt32(0, false) !== 348) throw new Error("not a NIfTI-1 file");
  const dims = [1, 2, 3].map((i) => dv.getInt16(40 + 2 * i, le));
  const datatype = dv.getInt16(70, le);
  const voxOffset = Math.round(dv.getFloat32(108, le));
  let slope = dv.getFloat32(112, le);
  const inter = dv.getFloat32(116, le);
  if (!slope) slope = 1;
  const srow = [];
  for (let r = 0; r < 3; r++) for (let c = 0; c < 4; c++) srow.push(dv.getFloat32(280 + 16 * r + 4 * c, le));
  const affine = [...srow, 0, 0, 0, 1];
  const Ctor = TYPES[datatype];
  if (!Ctor) throw new Error(`NIfTI datatype ${datatype} not supported`);
  const n = dims[0] * dims[1] * dims[2];
  const data = new Ctor(buffer, voxOffset, n);
  return {
    dims, affine, data,
    value(i, j, k) {
      if (i < 0 || j < 0 || k < 0 || i >= dims[0] || j >= dims[1] || k >= dims[2]) return NaN;
      return data[i + dims[0] * (j + dims[1] * k)] * slope + inter;
    },
  };
}

/** Gunzip with the browser's own DecompressionStream (native code, no JS inflate). */
export async function gunzip(u8) {
  if (!(u8[0] === 0x1f && u8[1] === 0x8b)) return u8.slice().buffer;
  const stream = new Blob([u8]).stream().pipeThrough(new DecompressionStream("gzip"));
  return await new Response(stream).arrayBuffer();
}
