"""A dataset as found in the wild: real photos plus every kind of bad or awkward file.

check-data must name each problem; the pipeline must read every usable file (alpha, grayscale,
CMYK, 16-bit, EXIF-rotated, GIF, BMP, WEBP, a lying extension) and skip the rest without crashing.
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CATS_VS_DOGS
from retreino.cli import main as cli
from retreino.data import load_dataset, make_pipeline, read_image
from retreino.data.check import check_dataset
from retreino.errors import DataError

BAD = {"train/cats/empty.jpg": "empty", "train/cats/notes.jpg": "not_image", "train/cats/bomb.png": "too_large",
       "train/dogs/truncated.jpg": "corrupt"}
AWKWARD = ["train/cats/alpha.png", "train/cats/cmyk.jpg", "train/cats/rotated.jpg", "train/dogs/gray.jpg",
           "train/dogs/sixteen.png", "train/dogs/really_png.jpg", "train/dogs/tiny.jpg", "train/dogs/anim.gif",
           "train/dogs/pic.bmp", "train/dogs/pic.webp"]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("messy")
    for split, n in (("train", 6), ("validation", 3), ("test", 3)):
        for cls in ("cats", "dogs"):
            (root / split / cls).mkdir(parents=True)
            for f in sorted((CATS_VS_DOGS / split / cls).glob("*.jpg"))[:n]:
                shutil.copy(f, root / split / cls / f.name)
    photo = Image.open(sorted((CATS_VS_DOGS / "train" / "dogs").glob("*.jpg"))[10]).convert("RGB").resize((120, 80))
    cats, dogs = root / "train" / "cats", root / "train" / "dogs"
    (cats / "empty.jpg").write_bytes(b"")
    (cats / "notes.jpg").write_text("these are my notes about the cats\n")
    (cats / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    rgba = photo.convert("RGBA")
    alpha = np.full((80, 120), 255, np.uint8)
    alpha[:, :60] = 0  # left half fully transparent: must come out white, not black
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(cats / "alpha.png")
    photo.convert("CMYK").save(cats / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    photo.save(cats / "rotated.jpg", exif=exif, quality=95)
    whole = (CATS_VS_DOGS / "train" / "dogs" / sorted(p.name for p in (CATS_VS_DOGS / "train" / "dogs").glob("*.jpg"))[20]).read_bytes()
    (dogs / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    photo.convert("L").save(dogs / "gray.jpg")
    ramp = (np.arange(80 * 120, dtype=np.uint32).reshape(80, 120) % 256).astype(np.uint16) * 257
    sixteen = Image.fromarray(ramp)
    assert sixteen.mode == "I;16"
    sixteen.save(dogs / "sixteen.png")
    photo.save(dogs / "really_png.jpg", format="PNG")
    photo.resize((16, 16)).save(dogs / "tiny.jpg")
    red, blue = Image.new("RGB", (40, 40), (255, 0, 0)), Image.new("RGB", (40, 40), (0, 0, 255))
    red.save(dogs / "anim.gif", save_all=True, append_images=[blue], duration=100)
    photo.save(dogs / "pic.bmp")
    photo.save(dogs / "pic.webp", quality=90)
    # The same photo in train and in test: leakage.
    leaked = sorted(cats.glob("*.jpg"))[0]
    shutil.copy(leaked, root / "test" / "cats" / "copy_of_train.jpg")
    return root


def test_check_data_names_every_problem(messy):
    report = check_dataset(messy)
    by_path = {}
    for p in report.problems:
        by_path.setdefault(report.rel(p.path), set()).add(p.kind)
    for rel, kind in BAD.items():
        assert kind in by_path.get(rel, set()), (rel, by_path)
    assert "extension" in by_path["train/dogs/really_png.jpg"]
    assert "tiny" in by_path["train/dogs/tiny.jpg"]
    leak = [p for p in report.problems if p.kind == "leak"]
    assert len(leak) == 1 and "copy_of_train.jpg" in leak[0].message and "train and test" in leak[0].message
    for rel in AWKWARD:  # awkward but fine: nothing to report beyond extension/size notes
        assert by_path.get(rel, set()) <= {"extension", "tiny"}, (rel, by_path.get(rel))
    assert report.ok and not report.fatal
    assert sorted(report.rel(p) for p in report.dataset.skipped) == sorted(BAD)
    text = report.format()
    assert "READY with warnings" in text and "4 unreadable file(s) will be skipped" in text
    assert "train/dogs/truncated.jpg" in text and "leakage" in text


def test_check_data_cli_exit_codes_and_json(messy, capsys):
    assert cli(["check-data", str(messy)]) == 0
    out = capsys.readouterr().out
    assert "split" in out and "READY with warnings" in out
    assert cli(["check-data", str(messy), "--strict"]) == 1
    assert "NOT READY: 4 fatal" in capsys.readouterr().out
    assert cli(["check-data", str(messy), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["classes"] == ["cats", "dogs"]
    assert {p["kind"] for p in data["problems"]} >= {"empty", "not_image", "too_large", "corrupt", "extension", "tiny", "leak"}
    row = next(r for r in data["table"] if r["split"] == "train" and r["class"] == "dogs")
    assert row["bad"] == 1 and row["images"] == 6 + 7 and row["formats"]["png"] == 2


def test_missing_root_is_one_line_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "retreino", "check-data", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("retreino check-data: error:") and "Traceback" not in proc.stderr


def test_load_dataset_skips_bad_files_with_one_warning(messy, capsys):
    ds = load_dataset(messy)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "skipping 4 unreadable image file(s)" in err
    assert len(ds.train) == 12 + len(AWKWARD) and len(ds.skipped) == 4
    with pytest.raises(DataError, match="4 unreadable image file"):
        load_dataset(messy, strict=True)


@pytest.mark.parametrize("cache", [True, False])
def test_pipeline_reads_every_usable_file(messy, cache):
    ds = load_dataset(messy, warn=False)
    pipe = make_pipeline(ds.train, image_size=(64, 64), batch_size=8, training=True, cache=cache, seed=0)
    total = 0
    for x, y in pipe:
        x = np.asarray(x)
        assert x.dtype == np.float32 and x.shape[1:] == (64, 64, 3) and y.shape == (len(x), 2)
        assert x.min() >= -1.0 and x.max() <= 1.0 and np.isfinite(x).all()
        total += len(x)
    assert total == len(ds.train)
    # Evaluation order: exactly read_image's pixels, file by file.
    ordered = make_pipeline(ds.train, image_size=(64, 64), batch_size=8, label_mode=None, cache=cache, preprocessing="raw")
    got = np.concatenate([np.asarray(b) for b in ordered])
    want = np.stack([read_image(p, (64, 64)) for p in ds.train.paths]).astype(np.float32)
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_awkward_files_decode_correctly(messy):
    cats, dogs = messy / "train" / "cats", messy / "train" / "dogs"
    alpha = read_image(cats / "alpha.png")
    assert alpha.shape == (80, 120, 3) and (alpha[:, :60] == 255).all()  # transparent -> white
    assert read_image(cats / "rotated.jpg").shape == (120, 80, 3)  # EXIF orientation applied
    rgb = read_image(dogs / "pic.bmp").astype(int)
    assert np.abs(read_image(cats / "cmyk.jpg").astype(int) - rgb).mean() < 12
    assert np.abs(read_image(dogs / "pic.webp").astype(int) - rgb).mean() < 12
    gray = read_image(dogs / "gray.jpg")
    assert gray.shape == (80, 120, 3) and (gray[..., 0] == gray[..., 2]).all()
    sixteen = read_image(dogs / "sixteen.png")
    assert sixteen[0, :5, 0].tolist() == [0, 1, 2, 3, 4] and sixteen[2, 15, 1] == (2 * 120 + 15) % 256
    gif = read_image(dogs / "anim.gif")
    assert tuple(gif[20, 20]) == (255, 0, 0)  # first frame


def test_file_broken_after_loading_never_stops_an_epoch(messy, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(messy, root)
    ds = load_dataset(root, warn=False)
    victim = Path(ds.train.paths[0])
    victim.write_bytes(victim.read_bytes()[:200])  # truncated after the scan
    for cache in (True, False):
        pipe = make_pipeline(ds.train, image_size=(32, 32), batch_size=8, training=True, cache=cache)
        assert sum(len(x) for x, _ in pipe) == len(ds.train) - 1
    with pytest.raises(DataError, match="cannot be decoded"):
        make_pipeline(ds.train, image_size=(32, 32), training=False)
