"""What a careful user expects when images, flags, files, disks or concurrent runs go wrong.

Each test builds its own tiny fixture (odd image files, a torn manifest, a garbage file) and
asserts the exact outcome: the message, the exit status, the files left and their bytes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import expand
import parse_logs
import train_expand
import train_original
from distdiff import cli
from distdiff.models.classifiers import ClassifierError, build_classifier, load_classifier, save_checkpoint
from distdiff.data.datasets import DatasetError
from distdiff.runs.expansion import CLAIMS, WorkItem, claim_source, select_sources
from distdiff.utils.files import atomic_write_text, describe_os_error
from distdiff.utils.images import MAX_PIXELS, ImageError, open_image, unwrap_worker_message
from distdiff.runs.manifest import MANIFEST, read_manifest
from distdiff.data.registry import load_dataset

REPO = Path(__file__).resolve().parents[1]


def run_script(*argv, cwd=REPO, preexec_fn=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True,
                          preexec_fn=preexec_fn, timeout=300)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The last stderr line, after checking there is no traceback above it."""
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------
# Images are read as they look


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rgb = np.asarray(open_image(tmp_path / "g16.png"))
    assert rgb.shape == (64, 64, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert np.array_equal(rgb[..., 0], np.round(ramp / 257.0).astype(np.uint8))
    assert (rgb == 255).mean() < 0.01  # PIL's convert("RGB") made 97% of them 255


def test_float_and_32_bit_images_are_scaled(tmp_path):
    Image.fromarray(np.full((4, 4), 0.5, np.float32), mode="F").save(tmp_path / "f.tif")
    Image.fromarray(np.array([[0, 70000], [140000, 280000]], np.int32), mode="I").save(tmp_path / "i.tif")
    assert np.asarray(open_image(tmp_path / "f.tif"))[0, 0].tolist() == [128, 128, 128]
    assert np.asarray(open_image(tmp_path / "i.tif"))[..., 0].tolist() == [[0, 64], [128, 255]]


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:, :24] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 24:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = np.asarray(open_image(tmp_path / "rotated.jpg")).astype(int)
    assert upright.shape == (48, 32, 3)  # unrotated it was 48 wide, 32 high
    assert upright[:20, :, 0].mean() > 240 and upright[:20, :, 2].mean() < 15  # the red half is on top
    assert upright[28:, :, 2].mean() > 240 and upright[28:, :, 0].mean() < 15


def test_cmyk_palette_alpha_and_gray_alpha(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    assert np.asarray(open_image(tmp_path / "cmyk.tif"))[0, 0].tolist() == [255, 0, 0]
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.save(tmp_path / "palette.png", transparency=0)  # index 0 (black) transparent
    assert np.asarray(open_image(tmp_path / "palette.png")).tolist() == [[[255, 255, 255], [255, 0, 0]],
                                                                          [[255, 0, 0], [255, 255, 255]]]
    Image.new("LA", (2, 2), (0, 128)).save(tmp_path / "la.png")  # black at half opacity over white
    assert np.asarray(open_image(tmp_path / "la.png"))[0, 0].tolist() == [127, 127, 127]
    Image.new("RGBA", (2, 2), (0, 0, 255, 0)).save(tmp_path / "clear.png")
    assert np.asarray(open_image(tmp_path / "clear.png"))[0, 0].tolist() == [255, 255, 255]


def _png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def bad_file(kind: str, folder: Path) -> Path:
    """One unreadable image of `kind` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "zero-byte":
        path = folder / "empty.png"
        path.write_bytes(b"")
    elif kind == "truncated":
        path = folder / "cut.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "corrupt":
        path = folder / "corrupt.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    elif kind == "symlink":
        path = folder / "link.png"
        path.symlink_to(folder / "gone.png")
    else:
        path = folder / "bomb.png"
        _png_header_only(path, 15000, 12000)
    return path


EXPECTED = {
    "zero-byte": lambda p: f"cannot read image {p}: the file is empty (0 bytes). Replace or remove it.",
    "symlink": lambda p: (f"cannot read image {p}: it is a symbolic link to {p.parent / 'gone.png'}, which does "
                          f"not exist. Fix the link or remove it."),
    "bomb": lambda p: (f"cannot read image {p}: 180000000 pixels is more than the {MAX_PIXELS} allowed (a guard "
                       f"against decompression bombs). Downscale it or remove it."),
}


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "corrupt", "symlink", "bomb"])
def test_unreadable_files_give_one_line_naming_the_file(tmp_path, kind):
    path = bad_file(kind, tmp_path)
    with pytest.raises(ImageError) as caught:
        open_image(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"cannot read image {path}: ")
    if kind in EXPECTED:
        assert message == EXPECTED[kind](path)
    else:
        assert message.endswith("The file is missing, truncated or not an image; replace or remove it.")


def test_a_dataloader_worker_error_is_unwrapped_to_its_line():
    wrapped = ("Caught ImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\ndistdiff.images.ImageError: cannot read image a.png: the file is empty')
    assert unwrap_worker_message(wrapped) == "cannot read image a.png: the file is empty"
    assert str(ImageError(wrapped)) == "cannot read image a.png: the file is empty"
    assert unwrap_worker_message("plain message") == "plain message"


# ---------------------------------------------------------------------------------------------
# Datasets: empty classes, unicode classes, unreadable files during training


def make_imagefolder(root: Path, classes: dict[str, int], *, size: int = 16, splits=("train", "test")) -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for label, (name, count) in enumerate(classes.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(rng.normal(60 + 120 * label, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}{i}.png")
    return root


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    ds = make_imagefolder(tmp_path / "ds", {"cat": 2, "dog": 2})
    (ds / "train" / "zebra").mkdir()
    (ds / "train" / "zebra" / ".DS_Store").write_bytes(b"x")  # hidden files are not images
    with pytest.raises(DatasetError, match=f"^class folder {ds / 'train' / 'zebra'} holds no images, so class "
                                           f"'zebra' could not be learned; add its images or remove the folder.$"):
        load_dataset(f"imagefolder:{ds}", "train")


TRAIN_FAST = ["--epochs", "1", "--batch_size", "4", "--image_size", "16", "--num_threads", "1"]


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "corrupt", "symlink", "bomb"])
def test_training_on_an_unreadable_synthetic_image_stops_with_its_name(tmp_path, kind, monkeypatch, caplog):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    ds = make_imagefolder(tmp_path / "ds", {"cat": 3, "dog": 3})
    expanded = make_imagefolder(tmp_path / "exp", {"cat": 2, "dog": 2}, splits=("x",)) / "x"
    bad = bad_file(kind, expanded / "dog")
    argv = [f"imagefolder:{ds}", "smallcnn", "0.1", "mine", "False", "0", "--expanded_dir", str(expanded),
            "--output_root", str(tmp_path / "runs"), "--num_workers", "1", *TRAIN_FAST]
    with pytest.raises(SystemExit) as caught:  # raised in a DataLoader worker process
        train_expand.main(train_expand.parse_args(argv))
    message = str(caught.value.code)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"train_expand.py: error: cannot read image {bad}: ")

    caplog.set_level(logging.WARNING)
    results = train_expand.main(train_expand.parse_args(argv + ["--skip_unreadable"]))
    assert results["num_unreadable_skipped"] == 1 and results["num_synthetic"] == 4
    assert f"skipping unreadable image (--skip_unreadable): {message.split('error: ', 1)[1]}" in caplog.text
    assert "skipped 1 unreadable images (train 0, val 0, test 0, synthetic 1)" in caplog.text
    saved = yaml.safe_load(next((tmp_path / "runs").rglob("results.yaml")).read_text())
    assert saved["num_unreadable_skipped"] == 1


def test_unicode_class_names_train_expand_and_train_again(tmp_path, tiny_sd_dir, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    ds = make_imagefolder(tmp_path / "ds", {"café": 3, "日本": 3}, size=32)
    runs = tmp_path / "runs"
    train_original.main(train_original.parse_args([f"imagefolder:{ds}", "smallcnn", "0.1", "False", "0",
                                                   "--output_root", str(runs), "--num_workers", "0", *TRAIN_FAST]))
    guide = next(runs.rglob("model_best.pth.tar"))
    out = tmp_path / "out"
    expand.main(expand.parse_args(["-d", f"imagefolder:{ds}", "--model", str(tiny_sd_dir), "-a", "smallcnn",
                                   "--guide_checkpoint", str(guide), "--output_dir", str(out), "--cache_dir",
                                   str(tmp_path / "cache"), "--num_images_per_prompt", "1", "--steps", "4",
                                   "--guidance_step", "2", "--guidance_period", "1", "--K", "2",
                                   "--num_threads", "1", "--no_report"]))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == sorted(
        f"{c}/train{i}_expand_0.png" for c in ("café", "日本") for i in range(3))
    assert {r["class"] for r in read_manifest(out / MANIFEST).values()} == {"café", "日本"}
    results = train_expand.main(train_expand.parse_args(
        [f"imagefolder:{ds}", "smallcnn", "0.1", "mine", "False", "0", "--expanded_dir", str(out),
         "--output_root", str(runs), "--num_workers", "0", *TRAIN_FAST]))
    assert results["num_synthetic"] == 6 and results["num_unreadable_skipped"] == 0


# ---------------------------------------------------------------------------------------------
# expand.py: flags, checkpoints, models, folders


@pytest.fixture
def expand_argv(tmp_path, tiny_sd_dir, digits_guide_checkpoint):
    def argv(out, *extra, cache="cache"):
        return ["-d", "digits", "--model", str(tiny_sd_dir), "--guide_checkpoint", str(digits_guide_checkpoint),
                "--output_dir", str(out), "--cache_dir", str(tmp_path / cache), "--max_source_images", "3",
                "--num_images_per_prompt", "2", "--steps", "4", "--guidance_step", "2", "--guidance_period", "1",
                "--batch_size", "2", "--num_threads", "1", "--no_report", *extra]
    return argv


@pytest.mark.parametrize("flag, value", [("--rho", "nan"), ("--rho", "inf"), ("--constraint_value", "nan"),
                                         ("--guidance_scale", "nan"), ("--strength", "nan"), ("--gs", "-inf")])
def test_nan_and_inf_settings_are_refused(tmp_path, expand_argv, flag, value):
    with pytest.raises(SystemExit) as caught:
        expand.main(expand.parse_args(expand_argv(tmp_path / "out", f"{flag}={value}")))
    assert caught.value.code == f"expand.py: error: {flag} must be a finite number, got {value}."
    assert not (tmp_path / "out").exists()


def test_a_refused_flag_exits_1_with_one_line(tmp_path, expand_argv):
    result = run_script("expand.py", *expand_argv(tmp_path / "out", "--rho", "nan"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "expand.py: error: --rho must be a finite number, got nan.\n"


def test_guide_checkpoint_is_checked_against_the_arch(tmp_path, expand_argv):
    with pytest.raises(SystemExit) as caught:
        expand.main(expand.parse_args(expand_argv(tmp_path / "out", "-a", "resnet18")))
    checkpoint = expand_argv(tmp_path)[expand_argv(tmp_path).index("--guide_checkpoint") + 1]
    assert caught.value.code == (f"expand.py: error: {checkpoint} holds a 'smallcnn' classifier, not the 'resnet18' "
                                 f"that -a asks for; pass -a smallcnn or a resnet18 checkpoint.")
    assert not list((tmp_path / "out").rglob("*.png"))


def test_bad_checkpoints_give_one_short_line(tmp_path):
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ClassifierError) as caught:
        load_classifier(junk)
    assert str(caught.value) == (f"{junk} is not a readable checkpoint (UnpicklingError: Unsupported operand 110); "
                                 f"it must be a model_best.pth.tar written by train_original.py or train_expand.py.")
    info = {"arch": "smallcnn", "num_classes": 10, "classes": [str(d) for d in range(10)], "image_size": 32,
            "mean": [0.5] * 3, "std": [0.5] * 3, "dataset": "digits"}
    save_checkpoint(tmp_path / "five.pth.tar", build_classifier("smallcnn", 5), info)  # 5-class head, says 10
    with pytest.raises(ClassifierError) as caught:
        load_classifier(tmp_path / "five.pth.tar")
    assert str(caught.value) == (f"{tmp_path / 'five.pth.tar'}: weights do not fit arch 'smallcnn' with 10 classes "
                                 f"(2 of another shape (file vs model), e.g. head.weight (5, 64) vs (10, 64)); the "
                                 f"file was changed or not written by our training.")


def test_a_model_folder_without_unet_says_so(tmp_path, expand_argv, tiny_sd_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_sd_dir, model)
    shutil.rmtree(model / "unet")
    with pytest.raises(SystemExit) as caught:
        expand.main(expand.parse_args(expand_argv(tmp_path / "out", "--model", str(model))))
    assert caught.value.code == (f"expand.py: error: --model {model} is a folder without unet/; a diffusers Stable "
                                 f"Diffusion folder holds unet, vae, text_encoder, tokenizer, scheduler (and "
                                 f"model_index.json).")


def test_fewer_copies_into_a_bigger_folder_is_refused(tmp_path, expand_argv):
    out = tmp_path / "out"
    expand.main(expand.parse_args(expand_argv(out)))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as caught:
        expand.main(expand.parse_args(expand_argv(out, "--num_images_per_prompt", "1")))
    assert caught.value.code == (f"expand.py: error: {out} already holds 2 copies per source image, more than "
                                 f"--num_images_per_prompt 1; train_expand.py would read all 2. Pass "
                                 f"--num_images_per_prompt 2 to continue it, or use another --output_dir.")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------------------------------------
# Folders a crash cannot break


def visible_files(out: Path) -> dict[str, bytes]:
    """Every file of an expansion except lock files, by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def test_a_torn_manifest_line_is_repaired_and_its_image_redone(tmp_path, expand_argv, caplog):
    out = tmp_path / "out"
    argv = expand_argv(out, "--batch_size", "1")  # the redone image then sits in the same batch (of one) as before
    expand.main(expand.parse_args(argv))
    reference = visible_files(out)
    manifest = (out / MANIFEST).read_bytes()
    last_start = manifest.rstrip(b"\n").rfind(b"\n") + 1
    (out / MANIFEST).write_bytes(manifest[:last_start + 40])  # a crash (or full disk) mid-append
    torn_image = json.loads(manifest[last_start:])["image"]
    (out / torn_image).unlink()
    caplog.set_level(logging.WARNING)
    again = expand.main(expand.parse_args(argv))
    assert again["written"] == 1 and "removed a torn last line (40 bytes)" in caplog.text
    assert visible_files(out) == reference  # the same bytes, manifest included
    assert expand.main(expand.parse_args(argv))["written"] == 0  # and every later run is clean


def test_garbage_prototypes_and_latents_are_recomputed_with_a_warning(tmp_path, expand_argv, caplog):
    out = tmp_path / "out"
    argv = expand_argv(out, "--batch_size", "1")  # a re-encoded latent then sits in the same batch (of one)
    expand.main(expand.parse_args(argv))
    reference = visible_files(out)
    (out / "prototypes.pt").write_bytes(b"garbage")
    cached = sorted((tmp_path / "cache").rglob("*.pt"))
    cached[0].write_bytes(b"garbage")
    for png in out.rglob("*.png"):
        png.unlink()
    (out / MANIFEST).unlink()
    caplog.set_level(logging.WARNING)
    expand.main(expand.parse_args(argv))
    assert f"{out / 'prototypes.pt'} is not a readable prototype file" in caplog.text
    assert f"{cached[0]} is not a readable PyTorch file" in caplog.text
    assert visible_files(out) == reference


def test_a_held_claim_keeps_a_second_run_off_that_source(tmp_path, expand_argv):
    out = tmp_path / "out"
    train = load_dataset("digits", "train")
    index = select_sources(train, 3)[0]
    first = train.samples[index]
    item = WorkItem(index, first.label, train.classes[first.label], first.stem, 0, 0)
    claim = claim_source(out, item)  # as another running expand.py would hold it
    try:
        assert claim_source(out, item) is None
        result = expand.main(expand.parse_args(expand_argv(out)))
    finally:
        claim.release()
    assert result["written"] == 4
    assert not any(r["source"].endswith(first.stem) for r in read_manifest(out / MANIFEST).values())
    assert expand.main(expand.parse_args(expand_argv(out)))["written"] == 2
    lines = (out / MANIFEST).read_text().splitlines()
    assert len(lines) == len({json.loads(line)["image"] for line in lines}) == 6
    assert (out / CLAIMS).is_dir()


def test_two_runs_at_once_share_the_work(tmp_path, expand_argv):
    out = tmp_path / "out"
    argv = expand_argv(out, "--max_source_images", "8", "--batch_size", "1")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "expand.py", *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    written = [int(stdout.split(" wrote ")[1].split()[0]) for stdout, _ in outputs]
    lines = (out / MANIFEST).read_text().splitlines()
    assert sum(written) == len(lines) == len({json.loads(line)["image"] for line in lines}) == 16
    assert len(list(out.rglob("*.png"))) == 16


KILLER = '''
import os, signal, sys
from contextlib import contextmanager
from distdiff import cli  # noqa: F401
import expand
from distdiff.runs import expansion

real_open, opened = expansion.atomic_open, []


class Dying:
    """A file handle that writes half of the first chunk it is given, then kill -9s its process."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        data = bytes(data)
        self.handle.write(data[:len(data) // 2])
        self.handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def __getattr__(self, name):
        return getattr(self.handle, name)


@contextmanager
def dying_open(path, mode="wb", **kwargs):
    with real_open(path, mode, **kwargs) as handle:
        opened.append(path)
        yield Dying(handle) if len(opened) == int(os.environ["KILL_AT_PNG"]) else handle


expansion.atomic_open = dying_open
expand.main(expand.parse_args(sys.argv[1:]))
'''


def test_kill_9_while_a_png_is_written_then_resume_is_byte_identical(tmp_path, expand_argv):
    reference = tmp_path / "reference"
    expand.main(expand.parse_args(expand_argv(reference)))
    out = tmp_path / "out"
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "KILL_AT_PNG": "4"}
    killed = subprocess.run([sys.executable, str(killer), *expand_argv(out, cache="cache2")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    # Batches of 2: batch 1 finished; batch 2 wrote its first PNG and died inside the second.
    pngs = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    temps = list(out.rglob(".*.png.*.tmp"))
    assert len(pngs) == 3 and len(temps) == 1 and 0 < temps[0].stat().st_size
    assert len((out / MANIFEST).read_text().splitlines()) == 2
    resumed = expand.main(expand.parse_args(expand_argv(out, cache="cache2")))
    assert resumed["written"] == 4
    assert visible_files(out) == visible_files(reference)  # PNGs, manifest, config, prototypes: same bytes
    assert not list(out.rglob("*.tmp"))


def test_a_disk_that_fills_up_during_expansion_is_one_line_and_the_rerun_completes(tmp_path, expand_argv):
    def argv(folder):
        return expand_argv(folder, "--batch_size", "1")  # a torn line's image is then redone in the same batch

    reference = tmp_path / "reference"
    expand.main(expand.parse_args(argv(reference)))  # also fills the latent cache
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    for made in [*out.rglob("*.png"), out / MANIFEST]:
        made.unlink()  # keep prototypes and config: only the manifest grows past the limit below

    def small_disk():  # writes past 3 KiB fail (EFBIG), as a full disk's fail with ENOSPC
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3 * 1024, 3 * 1024))

    result = run_script("expand.py", *argv(out), preexec_fn=small_disk)
    assert result.returncode == 1
    assert error_line(result) == (f"expand.py: error: cannot write {out / MANIFEST}: File too large; the file is "
                                  f"larger than this system allows (ulimit -f).")
    assert not (out / MANIFEST).read_bytes().endswith(b"\n")  # the disk cut the last line short
    expand.main(expand.parse_args(argv(out)))
    assert visible_files(out) == visible_files(reference)


# ---------------------------------------------------------------------------------------------
# Disks, permissions, modes


def test_written_files_follow_the_umask(tmp_path, expand_argv):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o002)
        expand.main(expand.parse_args(expand_argv(tmp_path / "out", "--max_source_images", "1")))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert {p.suffix for p in written} == {".png", ".jsonl", ".json", ".pt"}
    assert {p.stat().st_mode & 0o777 for p in written} == {0o664}


def test_an_output_root_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (tmp_path / "root").write_text("a file, not a folder")
    argv = ["digits", "smallcnn", "0.1", "False", "0", "--output_root", str(tmp_path / "root"), *TRAIN_FAST]
    with pytest.raises(SystemExit) as caught:
        train_original.main(train_original.parse_args(argv))
    seed = tmp_path / "root" / "digits" / "smallcnn_unpretrained_lr0.1" / "seed1"
    assert caught.value.code == (f"train_original.py: error: cannot write {seed}: Not a directory; a part of that "
                                 f"path is a file, not a folder.")


def test_a_disk_that_fills_up_during_training_is_one_line(tmp_path):
    def small_disk():  # writes past 64 KiB fail (EFBIG), as a full disk's fail with ENOSPC
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    result = run_script("train_original.py", "digits", "resnet18", "0.1", "False", "0", "--output_root",
                        tmp_path, "--num_workers", "0", *TRAIN_FAST, preexec_fn=small_disk)
    run = tmp_path / "digits" / "resnet18_unpretrained_lr0.1" / "seed1"
    assert result.returncode == 1
    assert error_line(result) == (f"train_original.py: error: cannot write {run / 'model_best.pth.tar'}: File too "
                                  f"large; the file is larger than this system allows (ulimit -f).")
    assert sorted(p.name for p in run.iterdir()) == ["log.txt"]  # no half-written checkpoint left behind


def test_enospc_is_described_in_one_line():
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/x.pt")
    assert describe_os_error(err) == ("cannot write /data/x.pt: No space left on device; free some space or write "
                                      "elsewhere.")
    with pytest.raises(SystemExit) as caught:
        with cli.user_errors("prog", ()):
            raise err
    assert caught.value.code == "prog: error: cannot write /data/x.pt: No space left on device; free some space or " \
                                "write elsewhere."
    with pytest.raises(FileNotFoundError):  # not the user's disk: our bug, full traceback
        with cli.user_errors("prog", ()):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "x")


def test_a_corrupt_results_yaml_is_named(tmp_path):
    seed = tmp_path / "exp" / "seed1"
    seed.mkdir(parents=True)
    (seed / "results.yaml").write_text("best_accuracy: 91.0\nseed: [1, 2\n")
    with pytest.raises(SystemExit) as caught:
        parse_logs.main(parse_logs.parse_args([str(tmp_path / "exp")]))
    assert caught.value.code == (f"parse_logs.py: error: {seed / 'results.yaml'} is not valid YAML (line 3); delete "
                                 f"it (the run then counts as unfinished) or rerun that seed with --overwrite.")


# ---------------------------------------------------------------------------------------------
# CPU threads


def test_default_threads_are_the_available_cpus_whatever_the_load(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 7.0, 6.0))  # a busy machine must not change the count
    monkeypatch.setattr(cli, "available_cpus", lambda: 3)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cli.configure_threads(None) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cli.configure_threads(None) == 2
    assert cli.configure_threads(1) == 1


ORDER_PROBE = """
import builtins, os
real, seen = builtins.__import__, []
def probe(name, *args, **kwargs):
    if name == "torch" and not seen:
        seen.append(os.environ.get("OMP_WAIT_POLICY"))
    return real(name, *args, **kwargs)
builtins.__import__ = probe
import {script}
print(seen[0])
"""


@pytest.mark.parametrize("script", ["expand", "train_original"])
def test_the_scripts_set_a_passive_openmp_wait_policy_before_torch_loads(script):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", ORDER_PROBE.format(script=script)], cwd=REPO,
                            env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "PASSIVE", result.stderr
