// Small 4x4 affine helpers (row-major arrays of 16 numbers).

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
