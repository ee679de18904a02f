// Small 4x4 affine helpers (row-major arrays of 16 numbers) and the scale-bar length.

export function invert4(m) {
  const [a, b, c, d, e, f, g, h, i, j, k, l] = m;
  // affine: last row is 0 0 0 1
  const det = a * (f * k - g * j) - b * (e * k - g * i) + c * (e * j - f * i);
  if (!det) throw new Error("singular affine");
  const r = [
    (f * k - g * j) / det, -(b * k - c * j) / det, (b * g - c * f) / det, 0,
    -(e * k - g * i) / det, (a * k - c * i) / det, -(a * g - c * e) / det, 0,
    (e * j - f * i) / det, -(a * j - b * i) / det, (a * f - b * e) / det, 0,
    0, 0, 0, 1,
  ];
  r[3] = -(r[0] * d + r[1] * h + r[2] * l);
  r[7] = -(r[4] * d + r[5] * h + r[6] * l);
  r[11] = -(r[8] * d + r[9] * h + r[10] * l);
  return r;
}

export function apply4(m, p) {
  return [
    m[0] * p[0] + m[1] * p[1] + m[2] * p[2] + m[3],
    m[4] * p[0] + m[5] * p[1] + m[6] * p[2] + m[7],
    m[8] * p[0] + m[9] * p[1] + m[10] * p[2] + m[11],
  ];
}

/** The native voxel axis (0 = i/x, 1 = j/y, 2 = k/z) best aligned with world axis `world` (0 R, 1 A, 2 S), and
 *  the sign that moves towards +world. */
export function alignedAxis(affine, world) {
  let best = 0;
  for (let a = 1; a < 3; a++) {
    if (Math.abs(affine[world * 4 + a]) > Math.abs(affine[world * 4 + best])) best = a;
  }
  return { axis: best, sign: Math.sign(affine[world * 4 + best]) || 1 };
}

const NICE = [1, 2, 5, 10, 20, 50, 100, 200];

/** A round length in mm whose bar is about `targetPx` long at `pxPerMm`. */
export function niceLength(pxPerMm, targetPx = 110) {
  const want = targetPx / pxPerMm;
  let best = NICE[0];
  for (const n of NICE) if (n <= want) best = n;
  return best;
}
