"""`medsuite convert` on image files: geometry kept, clear errors, no silent overwrite."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import typer
from typer.testing import CliRunner

from medsuite.commands.convert import command
from medsuite.io.sitk_io import read_image
from medsuite.io.volume import Volume


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("convert")(command)
    app.command("noop")(lambda: None)  # two commands, so "convert" is a real sub-command as in medsuite
    return app


def _invoke(*args: str):
    return CliRunner().invoke(_app(), ["convert", *map(str, args)])


def _oblique() -> Volume:
    direction = np.linalg.qr(np.array([[0.1, 0.2, 1.0], [0.3, 1.0, 0.1], [1.0, -0.2, 0.05]]))[0]
    array = np.zeros((6, 7, 8), dtype=np.int16)
    array[4, 1, 6] = 1000
    return Volume(array, spacing=(2.0, 0.8, 0.9), origin=(10.0, -20.0, 35.0), direction=direction)


def test_nrrd_to_nifti_keeps_the_marker_at_its_world_position(tmp_path):
    volume = _oblique()
    src, out = tmp_path / "scan.nrrd", tmp_path / "scan.nii.gz"
    sitk.WriteImage(volume.to_sitk(), str(src))
    result = _invoke(src, out)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "8x7x6 voxels" in result.output
    back = read_image(out)
    marker = np.unravel_index(np.argmax(back.array), back.shape)
    np.testing.assert_allclose(back.index_to_world(marker), volume.index_to_world((4, 1, 6)), atol=1e-3)


def test_existing_output_needs_force(tmp_path):
    src, out = tmp_path / "scan.mha", tmp_path / "scan.nii"
    sitk.WriteImage(_oblique().to_sitk(), str(src))
    assert _invoke(src, out).exit_code == 0
    again = _invoke(src, out)
    assert again.exit_code == 1 and "already exists (use --force" in again.output
    assert _invoke(src, out, "--force").exit_code == 0


def test_bad_inputs_are_one_line_errors(tmp_path):
    missing = _invoke(tmp_path / "absent", tmp_path / "o.nii.gz")
    assert missing.exit_code == 1 and "absent: no such file or folder" in missing.output
    src = tmp_path / "scan.mha"
    sitk.WriteImage(_oblique().to_sitk(), str(src))
    to_folder = _invoke(src, tmp_path / "outdir")
    assert to_folder.exit_code == 1 and "OUT must be a .nii.gz or .nii file" in to_folder.output
    bad_suffix = _invoke(src, tmp_path / "out.gz")
    assert bad_suffix.exit_code == 1 and "must end in .nii or .nii.gz" in bad_suffix.output
    garbage = tmp_path / "junk.bin"
    garbage.write_bytes(b"\x00" * 300)
    not_dicom = _invoke(garbage, tmp_path / "o.nii.gz")
    assert not_dicom.exit_code == 1 and "junk.bin: neither DICOM" in not_dicom.output
    assert not (tmp_path / "o.nii.gz").exists()


def test_convert_is_registered_in_the_cli():
    from medsuite.cli import COMMANDS

    assert ("convert", "convert") in {(name, module) for name, module, _ in COMMANDS}
