"""Dataset readers and the decoded-image cache shared by the four scripts.

Three readers, each returning an `ImageSet` (uint8 images (N, H, W, C) plus named labels):

* `load_celeba`  - CelebA in its official layout: `img_align_celeba/*.jpg` (also the nested
                   `img_align_celeba/img_align_celeba/` of the official zip and the Kaggle copy),
                   `list_attr_celeba.txt` (or Kaggle's `list_attr_celeba.csv`), and optionally
                   `identity_CelebA.txt` and `list_eval_partition.txt` (or `.csv`).
                   Labels: `attributes` (N, 40) in {0, 1}, `identity` (N,) when the file is there.
* `load_mnist`   - the official gzipped IDX files. Labels: `class` (N,).
* `load_folder`  - one sub-folder per class of images (FaceScrub-style). Labels: `class` (N,).
* `load_lfw`     - LFWcrop colour faces (`lfwcrop_color/faces/*.ppm`, 64x64) with the 73
                   real-valued attributes of Kumar et al. (`lfw_attributes.txt`), CMMA's data.
                   Labels: `attributes` (N, 73) float32.
* `load_cifar10` - CIFAR-10's python pickles (`cifar-10-batches-py/`), 32x32. Labels: `class`.
* `toy_data`     - Lr-LiVAE's 2-D toy points (three noisy half circles, Fig. 2), generated.

JPEGs are decoded, cropped and resized once, in parallel over all cores, into a uint8 `.npy`
cache keyed by the file list, file sizes, crop box and output size; later runs memory-map it.
`Batches` serves training batches from that array (or from a copy of it on the GPU) with no
per-step JPEG work, sharded by rank and a pure function of the step, so resume is exact.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import errno
import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import sys
import threading

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

import common

CACHE_VERSION = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")
DATASETS = ("celeba", "mnist", "folder", "lfw", "cifar10")

CELEBA_HELP = """\
CelebA is expected in {root} in its official layout:
    {root}/img_align_celeba/000001.jpg ... 202599.jpg   (also found one level deeper,
                                                         img_align_celeba/img_align_celeba/)
    {root}/list_attr_celeba.txt      (or list_attr_celeba.csv from the Kaggle copy)
    {root}/identity_CelebA.txt       (optional: identities as labels)
    {root}/list_eval_partition.txt   (optional: the official train/valid/test split)
Get it from the official site, https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html
("Align&Cropped Images" -> img_align_celeba.zip, plus Anno/ and Eval/), or the Kaggle mirror:
    kaggle datasets download -d jessicali9530/celeba-dataset
then unzip into the data folder:  unzip img_align_celeba.zip -d {root}"""

MNIST_HELP = """\
MNIST is expected in {root} as the official gzipped IDX files:
    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz
Get them from http://yann.lecun.com/exdb/mnist/ or its mirror
https://ossci-datasets.s3.amazonaws.com/mnist/ and put the .gz files (not unzipped) there."""


@dataclasses.dataclass
class ImageSet:
    """A decoded dataset split.

    images: (N, H, W, C) uint8 in [0, 255], usually a read-only memory map of the cache.
    labels: name -> (N, ...) array, e.g. 'attributes' (N, 40) uint8 {0, 1}, 'identity' (N,)
            int64, 'class' (N,) int64.
    names:  name -> list of column / class names ('attributes' -> the 40 CelebA names).
    """
    images: np.ndarray
    labels: dict
    names: dict
    files: list
    description: str

    def __len__(self) -> int:
        return len(self.images)


def load_dataset(name: str, root: str, split: str = "train", image_size: int = 64,
                 crop: tuple[int, int, int, int] | None = None, cache_dir: str | None = None,
                 verbose: bool = True) -> ImageSet:
    """Read `split` ('train', 'valid', 'test' or 'all') of dataset `name` from `root`.

    `crop` is (top, left, height, width) in source pixels, applied before resizing to
    `image_size` x `image_size` (None: the largest centred square). Raises ValueError for an
    unknown name or split, FileNotFoundError when files are missing (naming them).
    """
    if split not in ("train", "valid", "test", "all"):
        raise ValueError(f"unknown split {split!r}: use train, valid, test or all")
    if os.path.isfile(root):
        raise ValueError(f"--data-dir {root} is a file; a folder is expected, the one the {name} files are (or are "
                         f"to be) extracted into" + (" - unzip the archive there first" if root.endswith(
                             (".zip", ".tar", ".gz", ".tgz")) else ""))
    if name == "celeba":
        return load_celeba(root, split, image_size, crop, cache_dir, verbose)
    if name == "mnist":
        return load_mnist(root, split, image_size)
    if name == "folder":
        return load_folder(root, split, image_size, crop, cache_dir, verbose)
    if name == "lfw":
        return load_lfw(root, split, image_size, cache_dir, verbose)
    if name == "cifar10":
        return load_cifar10(root, split)
    raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------------------------
# CelebA
# ----------------------------------------------------------------------------------------------
def find_celeba_images(root: str) -> str:
    """The folder holding CelebA's JPEGs: root/img_align_celeba or its nested copy."""
    for candidate in (os.path.join(root, "img_align_celeba", "img_align_celeba"),
                      os.path.join(root, "img_align_celeba")):
        if os.path.isdir(candidate) and any(f.lower().endswith(".jpg") for f in os.listdir(candidate)):
            return candidate
    raise FileNotFoundError("no CelebA images found (looked for img_align_celeba/*.jpg and "
                            "img_align_celeba/img_align_celeba/*.jpg).\n"
                            + CELEBA_HELP.format(root=os.path.abspath(root)))


def _first_existing(root: str, names: tuple[str, ...]) -> str | None:
    for n in names:
        if os.path.isfile(os.path.join(root, n)):
            return os.path.join(root, n)
    return None


def read_celeba_attributes(path: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """Parse list_attr_celeba.txt (count line, names line, `file v1 .. v40` rows with v in
    {-1, 1}) or Kaggle's list_attr_celeba.csv. Returns (names, file -> (40,) uint8 in {0, 1}).

    Raises ValueError naming the file and line for a wrong count, a short or long row, a value
    other than -1/1, or a file listed twice.
    """
    if path.endswith(".csv"):
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        names, body, first_line = rows[0][1:], rows[1:], 2
    else:
        with open(path) as f:
            lines = f.read().splitlines()
        if len(lines) < 2 or not lines[0].strip().isdigit():
            raise ValueError(f"{path} line 1: expected the number of images, got {lines[:1]}")
        names, body, first_line = lines[1].split(), [l.split() for l in lines[2:] if l.strip()], 3
        if int(lines[0]) != len(body):
            raise ValueError(f"{path} line 1: says {int(lines[0])} images but {len(body)} rows follow; "
                             f"the file is truncated or edited - download it again")
    for i, row in enumerate(body):
        if len(row) != len(names) + 1:
            raise ValueError(f"{path} line {first_line + i}: {len(row) - 1} values for {len(names)} "
                             f"attributes in the header")
    # one vectorised pass over the tokens: the full file holds 8 million of them
    tokens = np.array([v for row in body for v in row[1:]], dtype="<U3").reshape(len(body), len(names))
    positive = tokens == "1"
    bad = np.flatnonzero(~np.all(positive | (tokens == "-1"), axis=1))
    if len(bad):
        raise ValueError(f"{path} line {first_line + bad[0]}: attribute values must be -1 or 1, "
                         f"got {body[bad[0]][1:6]}...")
    files = [row[0] for row in body]
    if len(set(files)) != len(files):
        seen: set = set()
        twice = next(i for i, f in enumerate(files) if f in seen or seen.add(f))
        raise ValueError(f"{path} line {first_line + twice}: {files[twice]} is listed twice")
    return names, dict(zip(files, positive.astype(np.uint8)))


def read_two_column(path: str) -> dict[str, int]:
    """Parse `file integer` rows (identity_CelebA.txt, list_eval_partition.txt, or their
    Kaggle .csv with a header). Raises ValueError naming the file and line of a bad row, or of
    a file listed twice (which row would be meant is unknowable)."""
    out: dict[str, int] = {}
    seen: dict[str, int] = {}
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    start = 1 if path.endswith(".csv") else 0
    for i, line in enumerate(lines[start:], start=start + 1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{path} line {i}: expected `filename integer`, got {line!r}")
        if parts[0] in seen:
            raise ValueError(f"{path} lists {parts[0]} twice (lines {seen[parts[0]]} and {i}); keep one row per file")
        out[parts[0]], seen[parts[0]] = int(parts[1]), i
    return out


def _check_labels_match(path: str, labelled: dict, files: list[str], image_dir: str) -> None:
    """Every image has a label row and every label row has an image, else a clear error."""
    present = set(files)
    for i, name in enumerate(labelled):
        if name not in present:
            raise ValueError(f"{path}: row {i + 1} labels {name}, which is not in {image_dir}; "
                             f"the images are incomplete (re-extract the zip) or the label file "
                             f"belongs to another copy")
    missing = [f for f in files if f not in labelled]
    if missing:
        raise ValueError(f"{path} has no row for {len(missing)} images in {image_dir} "
                         f"(first: {missing[0]}); use the label file that came with these images")


def _split_indices(n: int, split: str) -> np.ndarray:
    """The fixed fallback split: sorted order, first 80% train, last 20% valid/test."""
    cut = int(round(0.8 * n))
    return {"train": np.arange(cut), "valid": np.arange(cut, n),
            "test": np.arange(cut, n), "all": np.arange(n)}[split]


def load_celeba(root: str, split: str = "train", image_size: int = 64,
                crop: tuple[int, int, int, int] | None = None, cache_dir: str | None = None,
                verbose: bool = True) -> ImageSet:
    """CelebA `split` with labels 'attributes' (N, 40) {0, 1} and, if present, 'identity'.

    The split is the official list_eval_partition (0 train, 1 valid, 2 test) when that file is
    present and lists images for `split`; otherwise sorted file names cut 80/20 (said on
    stdout and in the ImageSet's description). Errors: see module docstring.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {os.path.abspath(root)} does not exist.\n"
                                + CELEBA_HELP.format(root=os.path.abspath(root)))
    image_dir = find_celeba_images(root)
    files = sorted(f for f in os.listdir(image_dir) if f.lower().endswith(".jpg"))
    attr_path = _first_existing(root, ("list_attr_celeba.txt", "list_attr_celeba.csv"))
    if attr_path is None:
        raise FileNotFoundError(f"found {len(files)} images in {image_dir} but no list_attr_celeba.txt "
                                f"in {os.path.abspath(root)}.\n" + CELEBA_HELP.format(root=os.path.abspath(root)))
    attr_names, attributes = read_celeba_attributes(attr_path)
    _check_labels_match(attr_path, attributes, files, image_dir)
    labels = {"attributes": np.stack([attributes[f] for f in files])}
    id_path = _first_existing(root, ("identity_CelebA.txt",))
    if id_path:
        identity = read_two_column(id_path)
        _check_labels_match(id_path, identity, files, image_dir)
        labels["identity"] = np.array([identity[f] for f in files], dtype=np.int64)

    index, how = _celeba_split(root, files, image_dir, split)
    chosen = [files[i] for i in index]
    labels = {k: v[index] for k, v in labels.items()}
    images = cached_decode([os.path.join(image_dir, f) for f in chosen], crop, image_size,
                           cache_dir, f"celeba-{split}", verbose)
    return ImageSet(images, labels, {"attributes": attr_names}, chosen,
                    f"CelebA {split}: {len(chosen)} images from {image_dir} ({how})")


def load_celeba_identities(root: str, split: str = "train", image_size: int = 64,
                           crop: tuple[int, int, int, int] | None = None, cache_dir: str | None = None,
                           min_images: int = 30, verbose: bool = True) -> ImageSet:
    """CelebA faces as identity classes, for models that condition on a class label.

    Keeps the identities of identity_CelebA.txt with at least `min_images` images; label
    'class' (N,) int64 indexes them in increasing identity number (names['class'] holds the
    numbers as strings). Every kept identity is in every split: per identity the last 20% of its
    sorted files are valid/test (the official partition puts each identity in one split only,
    which would leave test classes unseen). No attribute file is needed."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {os.path.abspath(root)} does not exist.\n"
                                + CELEBA_HELP.format(root=os.path.abspath(root)))
    image_dir = find_celeba_images(root)
    id_path = _first_existing(root, ("identity_CelebA.txt",))
    if id_path is None:
        raise FileNotFoundError(f"identities need {os.path.abspath(root)}/identity_CelebA.txt (file id per line, "
                                "from the official site's Anno/ folder).\n" + CELEBA_HELP.format(root=os.path.abspath(root)))
    files = sorted(f for f in os.listdir(image_dir) if f.lower().endswith(".jpg"))
    identity = read_two_column(id_path)
    _check_labels_match(id_path, identity, files, image_dir)
    groups: dict = {}
    for f in files:
        groups.setdefault(identity[f], []).append(f)
    groups = {str(i): groups[i] for i in sorted(groups) if len(groups[i]) >= min_images}
    if not groups:
        raise ValueError(f"no identity in {id_path} has {min_images} or more images among the {len(files)} in "
                         f"{image_dir}; lower --min-class-images")
    chosen, labels = split_per_class(groups, split)
    images = cached_decode([os.path.join(image_dir, f) for _, f in chosen], crop, image_size, cache_dir,
                           f"celeba-identities-{split}", verbose)
    return ImageSet(images, {"class": labels}, {"class": list(groups)}, [f for _, f in chosen],
                    f"CelebA identities {split}: {len(chosen)} images of {len(groups)} identities with "
                    f">= {min_images} images each, from {image_dir} (last 20% per identity held out)")


def _celeba_split(root: str, files: list[str], image_dir: str, split: str) -> tuple[np.ndarray, str]:
    """Official partition if it has both train (0) and test (2) images, else the 80/20 cut for
    every split (never official train + fallback test: they would overlap)."""
    if split == "all":
        return np.arange(len(files)), "all images"
    part_path = _first_existing(root, ("list_eval_partition.txt", "list_eval_partition.csv"))
    if part_path:
        partition = read_two_column(part_path)
        _check_labels_match(part_path, partition, files, image_dir)
        codes = np.array([partition[f] for f in files])
        if not np.isin(codes, (0, 1, 2)).all():
            bad = [(f, c) for f, c in zip(files, codes) if c not in (0, 1, 2)]
            raise ValueError(f"{part_path}: {len(bad)} image(s) have a partition code outside 0 (train), 1 (valid), "
                             f"2 (test), e.g. {bad[0][0]} {bad[0][1]}; such images would be in no split: fix the file")
        if (codes == 0).any() and (codes == 2).any():
            wanted = {"train": [0], "valid": [1] if (codes == 1).any() else [2], "test": [2]}[split]
            return np.flatnonzero(np.isin(codes, wanted)), "official partition"
        reason = f"{os.path.basename(part_path)} has no train or no test images (a sample?)"
    else:
        reason = "no list_eval_partition.txt"
    return _split_indices(len(files), split), f"{reason}: sorted names, first 80% train, last 20% test"


# ----------------------------------------------------------------------------------------------
# MNIST
# ----------------------------------------------------------------------------------------------
def read_idx(path: str) -> np.ndarray:
    """Read a gzipped IDX file (MNIST's format) into a uint8 array. Raises ValueError on a bad
    magic number or a short file, naming the file."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .gz file ({e}); download it again") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {body.size} bytes; it is truncated")
    return body.reshape(shape)


def read_mnist_pair(img_path: str, lab_path: str) -> tuple[np.ndarray, np.ndarray]:
    """An MNIST images file and its labels file: (N, 28, 28) uint8 and (N,) int64 digits 0-9.
    ValueError when the counts differ or a label is not a digit (a damaged or foreign file)."""
    images, labels = read_idx(img_path), read_idx(lab_path).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{img_path} holds {len(images)} images but {lab_path} {len(labels)} labels")
    if len(labels) and labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise ValueError(f"{lab_path}: label {labels[bad]} at position {bad} is not a digit 0-9; the file is "
                         f"damaged or not MNIST's: download it again")
    return images, labels


def load_mnist(root: str, split: str = "train", image_size: int = 28) -> ImageSet:
    """MNIST `split`: 'train' (60k) / 'test' (10k t10k); 'valid' is the test set.

    When only the t10k files are present (a sample, like the bundled one), a seeded random 80%
    of it (`mnist_sample_split`) is train and the rest valid/test, and the description says so:
    t10k's first half is written by other people than its second, so a cut in file order would
    test on other writers.
    Images (N, S, S, 1) uint8, label 'class' (N,) int64 in 0..9.
    """
    def pair(prefix: str):
        return (os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"),
                os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
    train, test = pair("train"), pair("t10k")
    have_train, have_test = all(map(os.path.isfile, train)), all(map(os.path.isfile, test))
    if not have_train and not have_test:
        raise FileNotFoundError(f"no MNIST files in {os.path.abspath(root)}.\n"
                                + MNIST_HELP.format(root=os.path.abspath(root)))
    if split == "train" and have_train:
        (img_path, lab_path), index, how = train, None, "official train set"
    elif split != "train" and have_test:
        (img_path, lab_path), index, how = test, None, "official test set"
    elif split == "train":  # t10k only: a sample
        (img_path, lab_path), how = test, "no train files: seeded 80% of t10k"
        index = mnist_sample_split(len(read_idx(test[1])), "train")
    else:
        raise FileNotFoundError(f"MNIST test files missing in {os.path.abspath(root)}.\n"
                                + MNIST_HELP.format(root=os.path.abspath(root)))
    images, labels = read_mnist_pair(img_path, lab_path)
    if index is None and split != "train" and not have_train:
        index, how = mnist_sample_split(len(images), split), "no train files: seeded 20% of t10k"
    if index is not None:
        images, labels = images[index], labels[index]
    if image_size != images.shape[1]:
        images = np.stack([np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BILINEAR))
                           for im in images])
    files = [f"{os.path.basename(img_path)}#{i}" for i in range(len(images))]
    return ImageSet(images[..., None], {"class": labels}, {"class": [str(d) for d in range(10)]}, files,
                    f"MNIST {split}: {len(images)} digits from {root} ({how})")


def mnist_sample_split(n: int, split: str, seed: int = 0) -> np.ndarray:
    """Indices of `split` in a seeded 80/20 split of n t10k digits (10,000: 8,000 / 2,000),
    each part in increasing order; 'valid' and 'test' are the same 20%."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(0.8 * n))
    return np.sort({"train": order[:cut], "all": order}.get(split, order[cut:]))


# ----------------------------------------------------------------------------------------------
# folder per class
# ----------------------------------------------------------------------------------------------
def load_folder(root: str, split: str = "train", image_size: int = 64,
                crop: tuple[int, int, int, int] | None = None, cache_dir: str | None = None,
                verbose: bool = True) -> ImageSet:
    """Images in `root/<class>/*.jpg` (any PIL format). Label 'class' (N,) int64 indexes the
    sorted class folder names. Split: per class, the last 20% of sorted files (at least one,
    for classes of 2+ images) are valid/test, the rest train."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {os.path.abspath(root)} does not exist; --dataset folder "
                                f"expects one sub-folder of images per class, e.g. {root}/alice/001.jpg")
    # hidden folders (.ipynb_checkpoints, .git) are not classes; neither are folders without images
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    groups, other = {}, []
    for name in folders:
        entries = sorted(f for f in os.listdir(os.path.join(root, name)) if not f.startswith("."))
        groups[name] = [f for f in entries if f.lower().endswith(IMAGE_EXTENSIONS)]
        other += [os.path.join(name, f) for f in entries if not f.lower().endswith(IMAGE_EXTENSIONS)]
    nested = [p for p in other if os.path.isdir(os.path.join(root, p))]
    for why, items in (("sub-folder(s) (classes are not nested; move their images up)", nested),
                       (f"file(s) of another format (read: {' '.join(IMAGE_EXTENSIONS)})",
                        [p for p in other if p not in nested])):
        if items and verbose:
            print(f"{root}: skipping {len(items)} {why}: {', '.join(items[:3])}" + (" ..." if len(items) > 3 else ""),
                  file=sys.stderr)
    empty = [name for name in folders if not groups[name]]
    if empty and verbose:
        print(f"{root}: skipping {len(empty)} sub-folder(s) without images: {', '.join(empty[:5])}"
              + (" ..." if len(empty) > 5 else ""), file=sys.stderr)
    groups = {name: files for name, files in groups.items() if files}
    classes = sorted(groups)
    chosen, labels = split_per_class(groups, split)
    paths = [os.path.join(root, name, f) for name, f in chosen]
    if not paths:
        raise FileNotFoundError(f"no images in class sub-folders of {os.path.abspath(root)} for split {split}; "
                                f"expected {root}/<class>/<image>.jpg ({', '.join(IMAGE_EXTENSIONS)})")
    images = cached_decode(paths, crop, image_size, cache_dir, f"folder-{split}", verbose)
    return ImageSet(images, {"class": labels}, {"class": classes}, [os.path.join(n, f) for n, f in chosen],
                    f"folder {split}: {len(paths)} images of {len(classes)} classes from {root}")


def split_per_class(groups: dict, split: str) -> tuple[list, np.ndarray]:
    """Hold out, per class, the last 20% of its sorted files (at least one, for classes of 2+).

    groups: class name -> sorted file names, in class order. Returns the (class name, file)
    pairs of `split` ('train', 'valid' == 'test', or 'all') and their class indices (N,) int64."""
    files, labels = [], []
    for c, (name, images) in enumerate(groups.items()):
        n_held = 0 if len(images) < 2 else max(1, int(round(0.2 * len(images))))
        keep = {"train": images[:len(images) - n_held], "all": images}.get(split, images[len(images) - n_held:])
        files += [(name, f) for f in keep]
        labels += [c] * len(keep)
    return files, np.array(labels, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# LFWcrop with attributes
# ----------------------------------------------------------------------------------------------
LFW_HELP = """\
LFW (CMMA's data) is expected in {root} as:
    {root}/lfwcrop_color/faces/Aaron_Eckhart_0001.ppm ...   (LFWcrop, 64x64 colour)
    {root}/lfw_attributes.txt                               (73 attributes, Kumar et al.)
Get LFWcrop from http://conradsanderson.id.au/lfwcrop/ (lfwcrop_color.zip; unzip -d {root}) and
lfw_attributes.txt from https://www.cs.columbia.edu/CAVE/databases/pubfig/download/lfw_attributes.txt"""


def read_lfw_attributes(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """Parse lfw_attributes.txt: '#' comment lines, a '#\tperson\timagenum\t<names...>' header,
    then tab-separated rows `person  imagenum  v1 .. v73` of real-valued classifier scores.
    Returns (names, LFWcrop file stems like 'Aaron_Eckhart_0001', (N, 73) float32).
    Raises ValueError naming the file and line of a short row or a non-number."""
    names, stems, rows = None, [], []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if line.startswith("#"):
                if len(parts) > 3 and parts[1].strip() == "person":
                    names = [p.strip() for p in parts[3:]]
                continue
            if not line.strip():
                continue
            if names is None:
                raise ValueError(f"{path} line {number}: a data row before the '#\tperson\timagenum' header")
            if len(parts) != len(names) + 2:
                raise ValueError(f"{path} line {number}: {len(parts) - 2} values for {len(names)} attributes")
            try:
                rows.append([float(v) for v in parts[2:]])
                stems.append(f"{parts[0].replace(' ', '_')}_{int(parts[1]):04d}")
            except ValueError:
                raise ValueError(f"{path} line {number}: expected an image number and numbers, got "
                                 f"{parts[1:4]}...") from None
    if names is None:
        raise ValueError(f"{path}: no '#\tperson\timagenum\t...' header line")
    return names, stems, np.array(rows, dtype=np.float32).reshape(len(rows), len(names))


def load_lfw(root: str, split: str = "train", image_size: int = 64, cache_dir: str | None = None,
             verbose: bool = True) -> ImageSet:
    """LFWcrop faces that have attributes, in the order of lfw_attributes.txt; CMMA's split:
    the first 10,000 train, the next 1,000 valid, the rest test (sec. 4). Label 'attributes'
    (N, 73) float32 classifier scores. A row naming a missing face is an error."""
    faces = next((d for d in (os.path.join(root, "lfwcrop_color", "faces"), os.path.join(root, "faces"))
                  if os.path.isdir(d)), None)
    attr_path = os.path.join(root, "lfw_attributes.txt")
    if faces is None or not os.path.isfile(attr_path):
        raise FileNotFoundError(f"LFW files missing in {os.path.abspath(root)}.\n"
                                + LFW_HELP.format(root=os.path.abspath(root)))
    names, stems, values = read_lfw_attributes(attr_path)
    present = {os.path.splitext(f)[0] for f in os.listdir(faces)}
    for i, stem in enumerate(stems):
        if stem not in present:
            raise ValueError(f"{attr_path}: row {i + 1} labels {stem}, which is not in {faces}; "
                             f"the LFWcrop folder is incomplete - unzip lfwcrop_color.zip again")
    index = {"train": np.arange(0, min(10_000, len(stems))), "valid": np.arange(10_000, min(11_000, len(stems))),
             "test": np.arange(11_000, len(stems)), "all": np.arange(len(stems))}[split]
    if len(stems) < 11_001 and split != "all":  # a sample: cut it 80/10/10 instead
        cut1, cut2 = int(0.8 * len(stems)), int(0.9 * len(stems))
        index = {"train": np.arange(cut1), "valid": np.arange(cut1, cut2), "test": np.arange(cut2, len(stems))}[split]
    chosen = [stems[i] for i in index]
    paths = [os.path.join(faces, s + ".ppm") for s in chosen]
    images = cached_decode(paths, None, image_size, cache_dir, f"lfw-{split}", verbose)
    return ImageSet(images, {"attributes": values[index]}, {"attributes": names}, chosen,
                    f"LFW {split}: {len(chosen)} faces from {faces}")


# ----------------------------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------------------------
CIFAR_HELP = """\
CIFAR-10 is expected in {root} as the python version:
    {root}/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch
Get https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and run: tar xzf cifar-10-python.tar.gz -C {root}"""


def load_cifar10(root: str, split: str = "train") -> ImageSet:
    """CIFAR-10 'train' (the 5 data batches, 50k) or 'test'/'valid' (test_batch, 10k): images
    (N, 32, 32, 3) uint8 and label 'class'. Raises FileNotFoundError / ValueError naming the file."""
    import pickle
    folder = next((d for d in (os.path.join(root, "cifar-10-batches-py"), root)
                   if os.path.isfile(os.path.join(d, "test_batch"))), None)
    if folder is None:
        raise FileNotFoundError(f"no CIFAR-10 batches in {os.path.abspath(root)}.\n"
                                + CIFAR_HELP.format(root=os.path.abspath(root)))
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "all": [f"data_batch_{i}" for i in range(1, 6)]
             + ["test_batch"]}.get(split, ["test_batch"])
    images, labels = [], []
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing.\n" + CIFAR_HELP.format(root=os.path.abspath(root)))
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except Exception as e:
            raise ValueError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    return ImageSet(np.concatenate(images), {"class": np.concatenate(labels)}, {"class": [str(i) for i in range(10)]},
                    [f"{n}#{i}" for n, b in zip(names, images) for i in range(len(b))],
                    f"CIFAR-10 {split}: {sum(map(len, images))} images from {folder}")


# ----------------------------------------------------------------------------------------------
# decoding and the cache
# ----------------------------------------------------------------------------------------------
def to_rgb8(im: Image.Image, path: str) -> Image.Image:
    """8-bit RGB of any PIL image. 16-bit greyscale (PNG's 'I;16' modes) is scaled by 255 / 65535
    first: PIL's own convert('RGB') clips it, so every pixel above 255 of 65535 would turn white.
    Raises ValueError for 32-bit integer or float images, whose range is not known."""
    if im.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(im, dtype=np.uint32) * 255 // 65535).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("I", "F"):
        raise ValueError(f"{path}: a {'32-bit integer' if im.mode == 'I' else 'floating-point'} image, whose pixel "
                         f"range is not known: save it as 8- or 16-bit PNG or JPEG")
    return im.convert("RGB")


def decode_image(path: str, crop: tuple[int, int, int, int] | None, size: int) -> np.ndarray:
    """Open, crop (top, left, height, width; None = centred square) and resize one image to
    (size, size, 3) uint8 with PIL's antialiased bilinear filter. Raises ValueError naming the
    file if it is corrupt or truncated, or if the crop box does not fit inside it."""
    try:
        with Image.open(path) as im:
            im = to_rgb8(im, path)
            w, h = im.size
            if crop is None:
                side = min(w, h)
                top, left, ch, cw = (h - side) // 2, (w - side) // 2, side, side
            else:
                top, left, ch, cw = crop
            if top < 0 or left < 0 or top + ch > h or left + cw > w:
                raise ValueError(f"{path}: crop box (top {top}, left {left}, {ch}x{cw}) does not fit "
                                 f"inside the {w}x{h} image")
            im = im.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BILINEAR)
            return np.array(im, dtype=np.uint8)
    except ValueError:
        raise
    except Exception as e:  # PIL raises OSError / UnidentifiedImageError / SyntaxError
        raise ValueError(f"{path}: cannot decode image ({type(e).__name__}: {e}); the file is corrupt or "
                         f"truncated - re-extract it from the dataset archive") from None


def _decode_chunk(args) -> np.ndarray:
    paths, crop, size = args
    return np.stack([decode_image(p, crop, size) for p in paths])


def decode_all(paths: list[str], crop, size: int, out: np.ndarray, verbose: bool = True,
               label: str = "images") -> None:
    """Decode `paths` into `out` (N, size, size, 3) uint8, in parallel over all cores for large
    sets, printing a progress line about every 2 s."""
    chunk = 256
    jobs = [(paths[i:i + chunk], crop, size) for i in range(0, len(paths), chunk)]
    workers = min(os.cpu_count() or 1, len(jobs))
    progress = common.Progress(f"decoding {label} ({workers} workers)", len(paths), "images", every=2.0, enabled=verbose)
    if workers <= 1 or len(paths) < 2 * chunk:
        results = map(_decode_chunk, jobs)
        pool = None
    else:
        pool = concurrent.futures.ProcessPoolExecutor(workers)
        results = pool.map(_decode_chunk, jobs)
    try:
        done = 0
        for arr in results:
            out[done:done + len(arr)] = arr
            done += len(arr)
            progress.update(len(arr))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


def default_cache_dir() -> str:
    """$FACE_VAE_CACHE, else ~/.cache/face-vaes: the decoded images (data folders are often
    read-only) and, under fidelity/, the real images' Inception features."""
    return os.environ.get("FACE_VAE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "face-vaes")


def cache_key(paths: list[str], crop, size: int) -> str:
    """sha256 over the cache version, every file's name, size and modification time (ns), the crop
    box and the size: a file replaced by another of the same byte size changes the key."""
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "crop": crop, "size": size}).encode())
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise FileNotFoundError(f"{p} is listed in the data set but cannot be opened"
                                    + (f" (a symbolic link to {os.readlink(p)}, which does not exist)" if os.path.islink(p)
                                       else "") + ": restore it or remove it from the data folder") from None
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached_decode(paths: list[str], crop, size: int, cache_dir: str | None, label: str,
                  verbose: bool = True) -> np.ndarray:
    """The (N, size, size, 3) uint8 images of `paths`, memory-mapped from the cache.

    The first call decodes them (rank 0 only under torch.distributed; the others wait) into
    `<cache_dir>/<label>-<size>px-<key>.npy`, written to a temporary name and moved into place,
    with a `.json` key beside it. Later calls with the same files, crop and size map it.
    Where the cache folder is local to each machine (not shared by the nodes of a multi-node
    run), the first process of each node that does not see rank 0's file builds its own.
    """
    cache_dir = cache_dir or default_cache_dir()
    key = cache_key(paths, crop, size)
    path = os.path.join(cache_dir, f"{label}-{size}px-{key[:16]}.npy")
    if not (dist.is_available() and dist.is_initialized()):
        if os.path.exists(path) and not _readable_cache(path, len(paths), size):
            os.remove(path)  # truncated (a disk that filled, a copy cut short): rebuilt below
        if not os.path.exists(path):
            _build_cache(path, paths, crop, size, key, label, verbose)
        return np.load(path, mmap_mode="r")
    if dist.get_rank() == 0 and not os.path.exists(path):
        _build_cache(path, paths, crop, size, key, label, verbose)
    dist.barrier()
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and not os.path.exists(path):
        _build_cache(path, paths, crop, size, key, label, verbose=False)
    dist.barrier()
    if not _readable_cache(path, len(paths), size):
        raise ValueError(f"the image cache {path} is damaged (truncated?): delete it and run again to rebuild it")
    return np.load(path, mmap_mode="r")


def _readable_cache(path: str, n: int, size: int) -> bool:
    """Whether the cache file maps as the (n, size, size, 3) uint8 array it should be; says so on stderr if not."""
    try:
        ok = np.load(path, mmap_mode="r").shape == (n, size, size, 3)
    except (ValueError, OSError, EOFError):
        ok = False
    if not ok:
        print(f"the image cache {path} is damaged (truncated?): rebuilding it", file=sys.stderr)
    return ok


def _raise_exit(signum, frame):
    raise SystemExit("stopped by SIGTERM while building the image cache; the partial file was removed, "
                     "run the same command to build it again")


def remove_stale_cache_files(path: str) -> None:
    """Delete this host's half-built copies of the cache `path` (`path.<host>.<pid>.tmp`) whose
    process is gone (a kill -9 or a crash mid-build; full CelebA at 64 px leaves 2.5 GB)."""
    host = socket.gethostname()
    folder, name = os.path.split(path)
    for f in os.listdir(folder):
        pid = f[len(name) + len(host) + 2:-4]
        if f.startswith(f"{name}.{host}.") and f.endswith(".tmp") and pid.isdigit() and not common.pid_alive(int(pid)):
            os.remove(os.path.join(folder, f))
            print(f"removed {os.path.join(folder, f)}, left by an interrupted cache build", file=sys.stderr)


def check_free_space(folder: str, needed: int) -> None:
    """The cache is a memory map written page by page: on a full disk the process dies of SIGBUS
    mid-build, with no message. So its size is checked first: OSError(ENOSPC) naming the folder,
    the bytes needed and the flag, which `common.user_errors` prints as one line."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"the decoded-image cache needs {needed / 2 ** 20:,.0f} MB and {folder} has "
                                    f"{free / 2 ** 20:,.0f} MB free; pass --cache-dir on a disk with room", folder)


def reserve_space(path: str) -> None:
    """Allocate the memory-mapped cache file's blocks now (posix_fallocate): a disk that fills up
    after the free-space check (another process writing) then fails here, as OSError(ENOSPC),
    instead of killing the process with SIGBUS on the first page it cannot write. Filesystems
    that cannot preallocate (some network mounts) rely on the free-space check alone."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(e.errno, f"the decoded-image cache needs {size / 2 ** 20:,.0f} MB and the disk "
                                       f"filled up while it was reserved; free space or pass --cache-dir on "
                                       f"another disk", os.path.dirname(path)) from None
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def _build_cache(path: str, paths: list[str], crop, size: int, key: str, label: str, verbose: bool) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    remove_stale_cache_files(path)
    check_free_space(os.path.dirname(path), len(paths) * size * size * 3 + 4096)
    tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"  # unique across the nodes of a shared folder
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
    # SIGTERM mid-build would end the process without running the clean-up below: make it raise
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_exit) if main_thread else None
    try:
        reserve_space(tmp)
        decode_all(paths, crop, size, out, verbose, label)
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, KeyboardInterrupt):  # Ctrl-C: one line and the shell's exit status, not a traceback
            print("stopped by Ctrl-C while building the image cache; the partial file was removed, "
                  "run the same command to build it again", file=sys.stderr)
            raise SystemExit(130) from None
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    common.save_json(path[:-4] + ".json", {"key": key, "crop": crop, "size": size, "count": len(paths),
                                           "first": paths[0], "last": paths[-1]})


# ----------------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------------
def to_float_images(u8: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float32 in [-1, 1] (x / 127.5 - 1), on u8's device.

    With channels_last the result keeps the NHWC memory layout (free: no copy of the layout)."""
    x = u8.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x if channels_last else x.contiguous()


class Batches:
    """Shuffled training batches from an ImageSet, one rank's shard, a pure function of step.

    Each epoch e draws a permutation of all N images from a generator seeded by (seed, e);
    rank r takes every world_size-th entry from r on, so the ranks' shards cover the set once
    per epoch, and each rank cuts its shard into floor(N / world_size / batch_size) batches
    (the remainder is dropped). `get(step)` returns the same batch whenever it is asked for,
    so a resumed run sees exactly the batches the uninterrupted run would have seen.
    The uint8 images are copied to the GPU once when `on_device` (and they fit).
    """

    def __init__(self, data: ImageSet, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1, label_keys: tuple[str, ...] = (),
                 on_device: bool | None = None, channels_last: bool = False):
        per_rank = len(data) // world_size
        if batch_size < 1 or per_rank < batch_size:
            raise ValueError(f"batch size {batch_size} x {world_size} rank(s) needs at least "
                             f"{batch_size * world_size} images, but {data.description}")
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.device, self.channels_last = device, channels_last
        self.steps_per_epoch = per_rank // batch_size
        if on_device is None:
            on_device = device.type == "cuda" and data.images.nbytes < 0.4 * torch.cuda.mem_get_info(device)[0]
        source = torch.from_numpy(np.array(data.images)) if on_device else None
        self.images = source.to(device) if on_device else data.images
        self.labels = {k: torch.from_numpy(np.asarray(data.labels[k])) for k in label_keys}
        if on_device:
            self.labels = {k: v.to(device) for k, v in self.labels.items()}
        self.on_device = on_device
        self._epoch, self._order, self._order_on_device = -1, None, None

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's image indices for `epoch`: (steps_per_epoch * batch_size,) int64."""
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            n = len(self.images)
            perm = torch.randperm(n, generator=g)[self.rank::self.world_size]
            self._epoch, self._order = epoch, perm[:self.steps_per_epoch * self.batch_size]
            # resident images are indexed on the device: one copy of the order per epoch, not a
            # blocking host-to-device copy of the indices per batch (it would wait for the GPU)
            self._order_on_device = self._order.to(self.device, non_blocking=True) if self.on_device else None
        return self._order

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        return self.order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]

    def get(self, step: int) -> tuple[torch.Tensor, dict]:
        """Batch `step`: images (B, C, H, W) float32 in [-1, 1] on the device, labels dict."""
        if self.on_device:  # no host-device synchronisation on this path
            epoch, i = divmod(step, self.steps_per_epoch)
            self.order(epoch)
            idx = self._order_on_device[i * self.batch_size:(i + 1) * self.batch_size]
            return to_float_images(self.images[idx], self.channels_last), {k: v[idx] for k, v in self.labels.items()}
        idx = self.indices(step)
        u8 = torch.from_numpy(self.images[idx.numpy()])  # reads only these rows of the memory map
        if self.device.type == "cuda":
            u8 = u8.pin_memory().to(self.device, non_blocking=True)
        labels = {k: v[idx].to(self.device, non_blocking=True) for k, v in self.labels.items()}
        return to_float_images(u8, self.channels_last), labels


# ----------------------------------------------------------------------------------------------
# the 2-D toy data of Lr-LiVAE's Fig. 2
# ----------------------------------------------------------------------------------------------
TOY_CENTRES = (-2.2, 0.0, 2.2)  # three half unit circles (Zheng & Sun 2019, B.1), noise sd 0.15 (their code)


def toy_data(points_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Paper B.1: three half unit circles centred at x = -2.2, 0, 2.2 (y = sin t - 0.5, t in
    [0, pi]) plus N(0, 0.15^2) noise. Returns points (3n, 2) float32 and labels (3n,) int64."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, (3, points_per_class))
    centres = np.array(TOY_CENTRES)[:, None]
    xy = np.stack([centres + np.cos(t), np.sin(t) - 0.5], -1) + rng.normal(0, 0.15, (3, points_per_class, 2))
    return xy.reshape(-1, 2).astype(np.float32), np.repeat(np.arange(3), points_per_class)


def toy_split(points_per_class: int, split: str) -> np.ndarray:
    """Indices of `split` in `toy_data`'s points: per class the first 80% train, the rest test."""
    within = np.arange(3 * points_per_class) % points_per_class
    return np.flatnonzero((within < int(0.8 * points_per_class)) == (split == "train"))


class ToyBatches(Batches):
    """`Batches` over the 2-D toy points: the same shuffling and sharding, float points."""

    def get(self, step: int) -> tuple[torch.Tensor, dict]:
        idx = self.indices(step)
        return (torch.from_numpy(self.images[idx.numpy()]).to(self.device, non_blocking=True),
                {k: v[idx].to(self.device, non_blocking=True) for k, v in self.labels.items()})


def toy_curve_coordinates(points: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where 2-D points (N, 2) lie relative to their class's half circle (labels (N,) in 0..2):
    the angle t in radians around the circle's centre (the curve spans t in [0, pi]: the
    label-irrelevant coordinate; t in (-pi/2, 3 pi/2], so noise below either end of the curve
    stays next to it) and the radial offset r - 1 (0 on the curve; the data's noise has sd 0.15).
    Returns (t, offset), each (N,)."""
    dx = points[:, 0] - np.asarray(TOY_CENTRES)[labels]
    dy = points[:, 1] + 0.5
    t = np.arctan2(dy, dx)
    return np.where(t < -np.pi / 2, t + 2 * np.pi, t), np.hypot(dx, dy) - 1.0
