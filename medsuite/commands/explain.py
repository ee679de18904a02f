"""`medsuite explain`: attributions for one case, or a sanity report for a bundle's attribution methods.

    medsuite explain BUNDLE --series PATH_OR_UID [--data DIR] [--nodule x,y,z] --out DIR
    medsuite explain --sanity BUNDLE TABLE [--data DIR] --out DIR
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def _parse_point(text: str) -> tuple[float, float, float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"--nodule must be three world mm numbers x,y,z (LPS), got {text!r}")
    return values  # type: ignore[return-value]


def _parse_methods(text: str) -> list[str]:
    from medsuite.interpret.attributions import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"--methods: unknown {bad or text!r}; choose from {','.join(METHODS)}")
    return methods


class _SeriesFinder:
    """Find a series by path (DICOM folder or file, or an image file: .mhd, .nrrd, .nii.gz), or by
    SeriesInstanceUID inside ``--data`` (scanned once: DICOM headers and image file names)."""

    def __init__(self, data: Path | None) -> None:
        self.data = data
        self._source: Any = None

    def read(self, path_or_uid: str, path: str | Path | None = None) -> Any:
        from medsuite.data.source import VolumeSource, read_path

        candidate = Path(path if path else path_or_uid)
        if candidate.exists():
            return read_path(candidate, path_or_uid if path else None)
        if self.data is None:
            raise ValueError(f"{path_or_uid}: no such file or folder (to find a series by UID, give --data DIR)")
        if self._source is None:
            self._source = VolumeSource(self.data)
        return self._source.get(path_or_uid)


def command(
    bundle: Annotated[Path, typer.Argument(help="Model bundle (folder or .zip).")],
    table: Annotated[Path | None, typer.Argument(help="With --sanity: nodule or series-label table (CSV/Parquet).")] = None,
    series: Annotated[str | None, typer.Option("--series", help="Series folder/file, or a SeriesInstanceUID found under --data.")] = None,
    nodule: Annotated[str | None, typer.Option("--nodule", help="Nodule centre x,y,z in world LPS mm (nodule models).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("explanations"),
    sanity: Annotated[bool, typer.Option("--sanity", help="Run the randomization and deletion/insertion checks on TABLE.")] = False,
    data: Annotated[Path | None, typer.Option("--data", help="Folder of DICOM or image files (<uid>.mhd, .nrrd, .nii.gz) to look series UIDs up in.")] = None,
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated: ig,occlusion,gradcam.")] = "ig,occlusion,gradcam",
    baseline: Annotated[str, typer.Option("--baseline", help="IG baseline / occlusion fill: air, blurred or zero.")] = "air",
    steps: Annotated[int, typer.Option("--steps", help="Integrated Gradients steps.")] = 50,
    noise_tunnel: Annotated[bool, typer.Option("--noise-tunnel", help="SmoothGrad-average IG over noisy copies.")] = False,
    occlusion_mm: Annotated[float, typer.Option("--occlusion-mm", help="Occlusion window edge in mm.")] = 8.0,
    target: Annotated[int | None, typer.Option("--target", help="Class index to explain (default: predicted).")] = None,
    covariate: Annotated[list[str] | None, typer.Option("--covariate", help="NAME=VALUE of a nodule-table column the "
                         "bundle fuses with the image, e.g. diameter_mm=12.5 (repeatable).")] = None,
    max_cases: Annotated[int, typer.Option("--max-cases", help="With --sanity: cases used from TABLE.")] = 8,
    max_layers: Annotated[int, typer.Option("--max-layers", help="With --sanity: randomization steps (layers).")] = 8,
    curve_steps: Annotated[int, typer.Option("--curve-steps", help="With --sanity: deletion/insertion points.")] = 20,
    include_phi: Annotated[bool, typer.Option("--include-phi", help="With --sanity: keep TABLE's case ids as they are "
                           "(default: ids holding a patient id become keyed pseudonyms, as in `medsuite score`; key "
                           "file: $MEDSUITE_PHI_KEY or the user's medsuite config folder).")] = False,
) -> None:
    """Explain one case (PNG overlays on the original planes, attribution NIfTI, summary.json), or with
    --sanity check the attribution methods themselves (sanity.html / sanity.json / plots)."""
    if not bundle.exists():  # before the heavy imports below, so that a typo answers at once
        raise _fail(f"{bundle}: bundle not found")
    try:
        chosen = _parse_methods(methods)
        finder = _SeriesFinder(data)
        from medsuite.learn.bundle import load_bundle

        loaded = load_bundle(bundle)
        if sanity:
            if table is None:
                raise ValueError("--sanity needs TABLE, the nodule or series-label table of cases to check")
            cases = _cases(loaded, table, finder, max_cases, include_phi)
            from medsuite.interpret.explain import run_sanity

            paths = run_sanity(loaded, cases, out, chosen, baseline=baseline, n_steps=min(steps, 32),
                               occlusion_mm=occlusion_mm, max_layers=max_layers, curve_steps=curve_steps)
            typer.echo(f"sanity report: {paths['html']}")
            return
        if table is not None:
            raise ValueError("TABLE is only used with --sanity")
        if series is None:
            raise ValueError("give the case with --series PATH_OR_UID")
        from medsuite.interpret.explain import explain

        center = _parse_point(nodule) if nodule else None
        result = explain(loaded, finder.read(series), chosen, center_xyz=center, out_dir=out, target=target,
                         baseline=baseline, n_steps=steps, noise_tunnel=noise_tunnel, occlusion_mm=occlusion_mm,
                         covariates=_parse_covariates(covariate))
        t = result.summary["target"]
        typer.echo(f"class {t['label']!r} p={result.probabilities[t['index']]:.3f}; wrote {len(result.files)} files to {out}")
    except (ValueError, FileNotFoundError, OSError, KeyError) as exc:
        raise _fail(str(exc)) from None


def _parse_covariates(items: list[str] | None) -> dict[str, float] | None:
    """``["diameter_mm=12.5"]`` -> ``{"diameter_mm": 12.5}`` (None when none are given)."""
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--covariate {item!r}: expected NAME=NUMBER, e.g. diameter_mm=12.5")
    return out


def _cases(bundle: Any, table_path: Path, finder: _SeriesFinder, max_cases: int,
           include_phi: bool = False) -> list[tuple[str, Any, Any]]:
    """Up to ``max_cases`` rows of the table as ``(case_id, volume, centre or None)``; case ids that hold a
    patient id are keyed pseudonyms unless ``include_phi`` (they are written to sanity.json / sanity.html)."""
    from medsuite.data.tables import read_table, validate_nodule_table

    df = read_table(table_path)
    if not include_phi:
        from medsuite.io.phi import Pseudonymizer

        df = Pseudonymizer.pseudonymize_table(df)
    is_nodule = getattr(bundle, "task", "nodule") == "nodule"
    if is_nodule:
        df = validate_nodule_table(df)
    elif "series_uid" not in df.columns:
        raise ValueError(f"{table_path}: a series table needs a 'series_uid' column")
    if "split" in df.columns and (df["split"] == "test").any():
        df = df[df["split"] == "test"]
    from medsuite.data.source import table_paths

    paths = table_paths(df)  # relative paths are taken from the table's folder
    cases = []
    for _, row in df.head(max_cases).iterrows():
        volume = finder.read(str(row["series_uid"]), paths.get(str(row["series_uid"])))
        center = (row["x_mm"], row["y_mm"], row["z_mm"]) if is_nodule else None
        cases.append((str(row["nodule_id"] if is_nodule else row["series_uid"]), volume, center))
    return cases
