"""Faults a new user meets, through each script's main(): one `error:` line (exit status 2, no
traceback) naming the problem, and nothing left behind."""
import os

import pytest
from PIL import Image

import cmma
import disentangled_vae
import vae_began
import vlae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, "tests", "data", "mnist")
SCRIPTS = {"vlae": (vlae, ["--dataset", "mnist", "--data-dir", MNIST]),
           "cmma": (cmma, ["--dataset", "mnist", "--data-dir", MNIST]),
           "disentangled_vae": (disentangled_vae, ["--dataset", "mnist", "--data-dir", MNIST]),
           "vae_began": (vae_began, ["--data-dir", os.path.join(ROOT, "tests", "data", "celeba")])}


def one_error_line(capsys, run) -> str:
    with pytest.raises(SystemExit) as stop:
        run()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_an_unknown_device_lists_the_accepted_ones(name, capsys, tmp_path):
    script, args = SCRIPTS[name]
    line = one_error_line(capsys, lambda: script.main(args + ["--device", "gpu", "--out", str(tmp_path / "run")]))
    assert "'gpu'" in line and "auto, cpu, cuda or cuda:N" in line


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_an_out_folder_under_a_file_is_one_line_and_leaves_nothing(name, capsys, tmp_path):
    script, args = SCRIPTS[name]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = one_error_line(capsys, lambda: script.main(args + ["--steps", "1", "--out", str(blocker / "run"),
                                                              "--cache-dir", str(tmp_path / "cache")]))
    assert "cannot write to" in line and "--out" in line
    assert sorted(os.listdir(tmp_path)) in (["a_file"], ["a_file", "cache"])
    assert not [f for f in os.listdir(tmp_path / "cache") if f.endswith(".tmp")] if (tmp_path / "cache").exists() else True


def test_vae_began_trains_and_draws_on_a_folder_with_few_held_out_images(tmp_path, capsys):
    for person in ("ann", "bo"):
        (tmp_path / "faces" / person).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (40, 40), (i * 50, 90, 160)).save(tmp_path / "faces" / person / f"{i}.jpg")
    out = tmp_path / "run"
    vae_began.main(["--dataset", "folder", "--data-dir", str(tmp_path / "faces"), "--out", str(out), "--steps", "2",
                    "--batch-size", "4", "--image-size", "32", "--filters", "4", "--latent-dim", "8",
                    "--cache-dir", str(tmp_path / "cache"), "--log-every", "1"])
    assert (out / "eval.json").exists() and (out / "figures" / "fig6_interpolation.png").exists()  # 2 held-out faces


def hold_lock(folder) -> "subprocess.Popen":
    """Another process that holds folder/.lock (as a training run does) until it is killed."""
    import subprocess
    import sys
    os.makedirs(folder, exist_ok=True)
    code = ("import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.truncate(0); f.write(str(os.getpid())); f.flush(); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, os.path.join(folder, ".lock")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_a_second_run_on_a_busy_out_is_refused_with_the_first_runs_pid(name, capsys, tmp_path):
    script, args = SCRIPTS[name]
    other = hold_lock(tmp_path / "run")
    try:
        line = one_error_line(capsys, lambda: script.main(args + ["--out", str(tmp_path / "run"), "--steps", "1"]))
        assert f"PID {other.pid}" in line and "another training run" in line and "--out" in line
        assert sorted(os.listdir(tmp_path / "run")) == [".lock"]  # nothing written
    finally:
        other.kill()
        other.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_note(tmp_path, capsys):
    import common
    other = hold_lock(tmp_path / "run")
    other.kill()
    other.wait()
    common.lock_run_folder(str(tmp_path / "run"))
    assert f"left by process {other.pid}, which is no longer running" in capsys.readouterr().out
    assert (tmp_path / "run" / ".lock").read_text() == str(os.getpid())


@pytest.mark.parametrize("errno_name", ["EROFS", "ENOSPC"])
def test_a_read_only_or_full_disk_under_out_is_one_line(errno_name, capsys, tmp_path, monkeypatch):
    """A read-only filesystem (EROFS) or a full disk (ENOSPC) where the run writes: one line that
    names the path and what to do, not a traceback (simulated: the tests may run as root)."""
    import errno
    real = os.makedirs

    def makedirs(path, *a, **k):
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)), str(path))
        return real(path, *a, **k)
    monkeypatch.setattr(os, "makedirs", makedirs)
    script, args = SCRIPTS["cmma"]
    line = one_error_line(capsys, lambda: script.main(args + ["--out", str(tmp_path / "ro" / "run"), "--steps", "1"]))
    assert str(tmp_path / "ro") in line and ("free some space" if errno_name == "ENOSPC" else "pass a folder") in line


def test_a_cache_dir_that_is_a_file_is_one_line(capsys, tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    script, args = SCRIPTS["vae_began"]  # faces go through the decoded-image cache
    line = one_error_line(capsys, lambda: script.main(args + ["--out", str(tmp_path / "run"), "--steps", "1",
                                                             "--cache-dir", str(tmp_path / "cache")]))
    assert str(tmp_path / "cache") in line


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_a_data_dir_that_is_a_file_is_named_as_such(name, capsys, tmp_path):
    (tmp_path / "faces.zip").write_bytes(b"PK")
    script, args = SCRIPTS[name]
    args = [a if a not in (MNIST, os.path.join(ROOT, "tests", "data", "celeba")) else str(tmp_path / "faces.zip")
            for a in args]
    line = one_error_line(capsys, lambda: script.main(args + ["--out", str(tmp_path / "run"), "--steps", "1"]))
    assert "is a file; a folder is expected" in line and "unzip" in line and "does not exist" not in line


@pytest.mark.parametrize("name,flag,value,message", [
    ("vae_began", "--eta", "0", "--eta must be > 0, got 0"),
    ("vae_began", "--adam-beta1", "1.5", "--adam-beta1 must be < 1, got 1.5"),
    ("vae_began", "--alpha", "nan", "--alpha must be >= 0, got nan"),
    ("disentangled_vae", "--rec-weight", "-1", "--rec-weight must be >= 0, got -1"),
    ("vlae", "--bn-momentum", "0", "--bn-momentum must be > 0, got 0"),
    ("cmma", "--width", "0", "--width must be > 0, got 0"),
    ("cmma", "--valid-images", "0", "--valid-images must be >= 1, got 0"),  # no faces to choose Parzen's window
    ("vlae", "--batch-size", "1", "--batch-size must be >= 2, got 1"),       # BatchNorm's raw message otherwise
    ("disentangled_vae", "--batch-size", "1", "--batch-size must be >= 2, got 1")])
def test_a_flag_outside_its_range_is_refused_before_training(name, flag, value, message, capsys, tmp_path):
    """A weight below 0, a momentum outside (0, 1] or NaN would train to NaN (or to nothing) and
    exit 0: refused up front, writing nothing."""
    script, args = SCRIPTS[name]
    line = one_error_line(capsys, lambda: script.main(args + ["--out", str(tmp_path / "run"), flag, value]))
    assert message in line and not os.path.exists(tmp_path / "run")


def test_vlae_refuses_a_held_out_split_too_small_for_eval_before_training(capsys, tmp_path):
    """A one-class folder of 3 faces holds out 1: eval's unbiased MMD needs 2, so the run is
    refused before it trains (it used to fail after training), as is --eval-images 1."""
    faces = sorted(os.listdir(os.path.join(ROOT, "tests", "data", "celeba", "img_align_celeba")))[:3]
    os.makedirs(tmp_path / "one" / "alice")
    for f in faces:
        Image.open(os.path.join(ROOT, "tests", "data", "celeba", "img_align_celeba", f)).save(tmp_path / "one" / "alice" / f)
    line = one_error_line(capsys, lambda: vlae.main(["--dataset", "folder", "--data-dir", str(tmp_path / "one"),
                                                     "--out", str(tmp_path / "run"), "--steps", "1"]))
    assert "has 1 image(s) and eval needs at least 2" in line
    assert not os.path.exists(tmp_path / "run" / "checkpoint.pt")
    line = one_error_line(capsys, lambda: vlae.main(SCRIPTS["vlae"][1] + ["--eval-images", "1", "--out", str(tmp_path)]))
    assert "--eval-images must be >= 2" in line


def test_a_cache_that_would_not_fit_on_the_disk_is_one_line_before_any_write(capsys, tmp_path, monkeypatch):
    """The decoded-image cache is a memory map: on a full disk the process died of SIGBUS with
    no message and left its temp file. Its size is now checked against the free space first."""
    import collections
    import shutil
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10 ** 9, 10 ** 9 - 1000, 1000))
    script, args = SCRIPTS["vae_began"]
    line = one_error_line(capsys, lambda: script.main(args + ["--out", str(tmp_path / "run"), "--steps", "1",
                                                             "--cache-dir", str(tmp_path / "cache")]))
    assert "the decoded-image cache needs" in line and str(tmp_path / "cache") in line and "--cache-dir" in line
    assert not [f for f in os.listdir(tmp_path / "cache") if f.endswith(".tmp")]


@pytest.mark.parametrize("kind", ["png", "json", "npz"])
def test_a_full_disk_while_writing_a_file_is_one_line_and_leaves_the_old_file(kind, capsys, tmp_path, monkeypatch):
    """ENOSPC in the middle of a write (simulated: each write puts 3 bytes down, then fails): one
    line that names the file, the file that was there is intact, and no temporary file is left."""
    import builtins
    import errno
    import numpy as np
    import torch
    import common

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:3])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
    monkeypatch.setattr(common, "open", lambda *a, **k: FullDisk(builtins.open(*a, **k)), raising=False)
    path = tmp_path / f"samples.{kind}"
    path.write_bytes(b"the old file")

    def run():
        with common.user_errors():
            if kind == "png":
                common.save_grid(torch.zeros(4, 3, 8, 8), str(path), nrow=2)
            elif kind == "json":
                common.save_json(str(path), {"fid": 1.0})
            else:  # how disentangled_vae writes its toy points
                with common.atomic_write(str(path), "wb") as f:
                    np.savez(f, a=np.zeros(3))
    line = one_error_line(capsys, run)
    assert f"cannot write to {path} (No space left on device)" in line and "free some space" in line
    assert path.read_bytes() == b"the old file" and sorted(os.listdir(tmp_path)) == [path.name]


def test_a_disk_that_fills_during_the_cache_build_is_one_line_and_leaves_no_temp_file(capsys, tmp_path, monkeypatch):
    """Another process fills the disk after the free-space check: the cache's blocks are reserved
    up front (posix_fallocate), so that is an ENOSPC error line, not SIGBUS mid-build with the
    decode workers and a half-written temp file left behind (simulated: the reservation fails)."""
    import errno

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "posix_fallocate", full)
    script, args = SCRIPTS["vae_began"]
    line = one_error_line(capsys, lambda: script.main(args + ["--out", str(tmp_path / "run"), "--steps", "1",
                                                             "--cache-dir", str(tmp_path / "cache")]))
    assert "the disk filled up" in line and str(tmp_path / "cache") in line and "--cache-dir" in line
    assert os.listdir(tmp_path / "cache") == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders; the EROFS test above simulates the same fault")
def test_a_read_only_out_folder_is_one_line(capsys, tmp_path):
    """A real read-only folder (chmod 0o500) as --out's parent: one line naming it, nothing written."""
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        script, args = SCRIPTS["cmma"]
        line = one_error_line(capsys, lambda: script.main(args + ["--out", str(tmp_path / "ro" / "run"), "--steps", "1"]))
        assert str(tmp_path / "ro") in line and "pass a folder you can write to" in line
        assert os.listdir(tmp_path / "ro") == []
    finally:
        os.chmod(tmp_path / "ro", 0o700)


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_an_out_that_is_a_dangling_link_names_the_missing_target(name, capsys, tmp_path):
    """--out pointing at a removed folder was 'File exists': now the link and its target are named."""
    script, args = SCRIPTS[name]
    os.symlink(tmp_path / "gone", tmp_path / "out")
    line = one_error_line(capsys, lambda: script.main(args + ["--out", str(tmp_path / "out"), "--steps", "1"]))
    assert "is a symbolic link to" in line and "gone" in line and "does not exist" in line


def test_every_class_unseen_says_no_seen_class_is_left(capsys, tmp_path):
    script, args = SCRIPTS["disentangled_vae"]
    line = one_error_line(capsys, lambda: script.main(args + ["--out", str(tmp_path / "run"), "--steps", "1",
                                                              "--unseen-classes", "0,1,2,3,4,5,6,7,8,9"]))
    assert "no seen class is left" in line


def test_vlae_refuses_an_image_size_beyond_1024_before_allocating(capsys, tmp_path):
    """--image-size 100000 was an 81 TB allocation traceback."""
    script, args = SCRIPTS["vlae"]
    line = one_error_line(capsys, lambda: script.main(args + ["--out", str(tmp_path / "run"), "--image-size", "100000"]))
    assert "--image-size must be between 4 and 1024" in line


def test_cmma_attributes_other_than_the_datas_are_refused(capsys, tmp_path):
    """--attributes 5 was silently replaced by the data's count."""
    script, args = SCRIPTS["cmma"]
    line = one_error_line(capsys, lambda: script.main(args + ["--out", str(tmp_path / "run"), "--attributes", "5"]))
    assert "--attributes 5: the data set has 10 attributes per image" in line


@pytest.mark.parametrize("name", ["vlae", "cmma", "vae_began"])
def test_a_broken_held_out_image_stops_the_run_before_training(name, capsys, tmp_path):
    """The held-out split used to be decoded only for the eval after training."""
    import shutil
    celeba = os.path.join(ROOT, "tests", "data", "celeba")
    files = sorted(os.listdir(os.path.join(celeba, "img_align_celeba")))[:20]
    os.makedirs(tmp_path / "c" / "img_align_celeba")
    for f in files:
        shutil.copy(os.path.join(celeba, "img_align_celeba", f), tmp_path / "c" / "img_align_celeba" / f)
    lines = open(os.path.join(celeba, "list_attr_celeba.txt")).read().splitlines()
    rows = [l for l in lines[2:] if l.split()[0] in files]
    (tmp_path / "c" / "list_attr_celeba.txt").write_text("\n".join([str(len(rows)), lines[1]] + rows) + "\n")
    (tmp_path / "c" / "img_align_celeba" / files[-1]).write_bytes(b"not a jpeg")  # the last 20% are held out
    script = SCRIPTS[name][0]
    args = ["--dataset", "celeba", "--data-dir", str(tmp_path / "c"), "--out", str(tmp_path / "run"), "--steps", "1",
            "--cache-dir", str(tmp_path / "cache")]
    line = one_error_line(capsys, lambda: script.main(args + (["--image-size", "32"] if name != "cmma" else [])))
    assert files[-1] in line
    assert not os.path.exists(tmp_path / "run" / "checkpoint.pt")
