"""`pointillist export`: every format from a bundle, and user errors as one line with exit code 2."""

from __future__ import annotations

import json

import pytest
from plyfile import PlyData

from pointillist.cli import main
from pointillist.export.gltf_document import read_glb


def run(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


def test_ply_rest_and_posed(bundle, tmp_path, capsys):
    code, summary, _ = run(capsys, "export", bundle, "--format", "ply", "-o", tmp_path / "rest.ply")
    assert code == 0 and summary["files"] == 1
    code, _, _ = run(capsys, "export", bundle, "--format", "ply", "-o", tmp_path / "smile.ply",
                     "--expression", "mouthSmileLeft=1", "--jaw", "10")
    assert code == 0
    rest, smile = (PlyData.read(str(tmp_path / n))["vertex"].data for n in ("rest.ply", "smile.ply"))
    assert len(rest) == len(smile) and not (rest["y"] == smile["y"]).all()


def test_ply_sequence_and_glb_clip(bundle, tmp_path, capsys):
    code, summary, _ = run(capsys, "export", bundle, "--format", "ply-seq", "-o", tmp_path / "seq", "--frames", "1:4")
    assert code == 0 and summary["files"] == 4
    assert sorted(p.name for p in (tmp_path / "seq").iterdir()) == [f"frame_000{i}.ply" for i in range(1, 5)]
    code, _, _ = run(capsys, "export", bundle, "--format", "glb", "-o", tmp_path / "a.glb", "--frames", "1:10", "--fps", "10")
    assert code == 0
    gltf, _ = read_glb((tmp_path / "a.glb").read_bytes())
    assert gltf["animations"][0]["name"] == "talk"
    assert gltf["accessors"][gltf["animations"][0]["samplers"][0]["input"]]["max"] == [pytest.approx(0.9)]


@pytest.mark.parametrize("argv, message", [
    (["--format", "gaussianavatars", "-o", "{tmp}/ga"], "needs a FLAME head model"),
    (["--format", "ply", "-o", "{tmp}/x.ply", "--frames", "1:3"], "--frames applies to ply-seq and glb"),
    (["--format", "ply", "-o", "{tmp}/x.ply", "--frame", "2", "--jaw", "5"], "cannot be combined"),
    (["--format", "ply-seq", "-o", "{tmp}/s", "--frames", "4:1"], "frame range 4:1"),
    (["--format", "ply", "-o", "{tmp}/x.ply", "--expr", "nope=1"], "unknown expression 'nope'"),
    (["--format", "ply", "-o", "{tmp}/x.ply", "--frame", "3", "--motion", "{tmp}/missing.json"], "no such file"),
])
def test_user_errors_are_one_line(bundle, tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "export", bundle, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_existing_output_needs_overwrite(bundle, tmp_path, capsys):
    target = tmp_path / "rest.ply"
    target.write_bytes(b"keep")
    code, _, err = run(capsys, "export", bundle, "--format", "ply", "-o", target)
    assert code == 2 and "--overwrite" in err and target.read_bytes() == b"keep"
    code, _, _ = run(capsys, "export", bundle, "--format", "ply", "-o", target, "--overwrite")
    assert code == 0 and target.read_bytes().startswith(b"ply")
