"""`medsuite.io.phi`: keyed pseudonyms, scrubbed text and sealed locations."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from medsuite.io.phi import PhiKeyError, Pseudonymizer, load_or_create_key

KEY = b"k" * 32


def _pz(**kw) -> Pseudonymizer:
    return Pseudonymizer(KEY, patient_ids=["QXWZID001", "P1"], roots=["/data/in"],
                         paths=["/data/in/Smith John^X/IM 1.dcm", "/data/in/Doe_QXWZID001/a.dcm"], **kw)


def test_paths_names_and_patient_ids_in_text():
    pz = _pz()
    cases = {
        "/data/in/Smith John^X/IM 1.dcm: truncated (bad)": "Smith",
        "series in '/data/in/Smith John^X' failed": "Smith",
        "folder Smith John^X is odd": "Smith",
        "not a dicom file: /data/in/Doe_QXWZID001/a.dcm": "Doe",
        "patient QXWZID001 / qxwzid001": "QXWZID",
    }
    for message, secret in cases.items():
        clean = pz.text(message)
        assert secret.lower() not in clean.lower(), clean
        assert "<path-" in clean or "<name-" in clean or "<pid-" in clean
    assert pz.text("not a dicom file") == "not a dicom file"  # the input's own name is no word to replace
    assert pz.text("P1 and 12 are short") == "P1 and 12 are short"  # too short to search inside text
    assert pz.text("/data/in/Smith John^X/IM 1.dcm") == pz.text("/data/in/Smith John^X/IM 1.dcm")  # stable


def test_ids_are_pseudonymised_only_when_they_hold_a_patient_id():
    pz = _pz()
    assert pz.id("QXWZID001-n1").startswith("id-") and pz.id("n0a") == "n0a"
    assert pz.id("QXWZID001-n1") == Pseudonymizer(KEY, patient_ids=["QXWZID001"]).id("QXWZID001-n1")  # joinable
    assert pz.id("QXWZID001-n1") != Pseudonymizer(b"x" * 32, patient_ids=["QXWZID001"]).id("QXWZID001-n1")
    df = pd.DataFrame({"patient_id": ["QXWZID001", None], "nodule_id": ["QXWZID001-n1", "n2"]})
    out = pz.table(df)
    assert out["patient_id"][0].startswith("pid-") and pd.isna(out["patient_id"][1])
    assert out["nodule_id"].tolist() == [pz.id("QXWZID001-n1"), "n2"] and df["nodule_id"][0] == "QXWZID001-n1"


def test_sealed_locations_open_only_with_the_key():
    pz = _pz()
    sealed = pz.seal("/data/in/Smith John^X")
    assert sealed.startswith("phi1:") and "Smith" not in sealed and sealed != pz.seal("/data/in/Smith John^X")
    assert pz.unseal(sealed) == "/data/in/Smith John^X" and pz.unseal("/plain/path") == "/plain/path"
    with pytest.raises(PhiKeyError, match="another pseudonymisation key"):
        Pseudonymizer(b"x" * 32).unseal(sealed)


def test_the_key_file_is_created_once_private_and_shared_by_concurrent_processes(tmp_path, monkeypatch):
    path = tmp_path / "cfg" / "phi.key"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_key(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys[0]) == 64
    assert (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["phi.key"]  # no temporary left
    monkeypatch.setenv("MEDSUITE_PHI_KEY", str(path))
    assert Pseudonymizer.from_key_file().id("x") == Pseudonymizer(keys[0]).id("x")
    path.write_text("short")
    with pytest.raises(PhiKeyError, match="too short"):
        load_or_create_key(path)
