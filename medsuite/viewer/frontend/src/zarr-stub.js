// NiiVue imports zarrita for OME-Zarr pyramids, which the medsuite viewer never loads; this stub keeps ~1.4 MB
// of codecs (zstd, blosc) out of the bundle. Any attempt to use it fails loudly.
const unsupported = () => {
  throw new Error("OME-Zarr is not part of the medsuite viewer bundle");
};
export const slice = unsupported;
export const FetchStore = unsupported;
export const root = unsupported;
export const open = unsupported;
export const get = unsupported;
