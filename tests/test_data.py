import gzip
import os
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image

import data

CROP = (55, 35, 108, 108)


def copy_celeba(src, dst, n=20):
    """A small CelebA copy in the official layout with the first n faces of the sample."""
    files = sorted(os.listdir(os.path.join(src, "img_align_celeba")))[:n]
    os.makedirs(os.path.join(dst, "img_align_celeba"))
    for f in files:
        shutil.copy(os.path.join(src, "img_align_celeba", f), os.path.join(dst, "img_align_celeba", f))
    keep = set(files)
    lines = open(os.path.join(src, "list_attr_celeba.txt")).read().splitlines()
    rows = [l for l in lines[2:] if l.split()[0] in keep]
    with open(os.path.join(dst, "list_attr_celeba.txt"), "w") as f:
        f.write("\n".join([str(len(rows)), lines[1]] + rows) + "\n")
    for name in ("identity_CelebA.txt",):
        rows = [l for l in open(os.path.join(src, name)).read().splitlines() if l.split()[0] in keep]
        with open(os.path.join(dst, name), "w") as f:
            f.write("\n".join(rows) + "\n")
    return files


def test_celeba_sample_reads_with_attributes_identities_and_a_disjoint_split(celeba_dir):
    train = data.load_dataset("celeba", celeba_dir, "train", 64, CROP)
    test = data.load_dataset("celeba", celeba_dir, "test", 64, CROP)
    assert train.images.shape == (160, 64, 64, 3) and train.images.dtype == np.uint8
    assert len(test) == 40 and not set(train.files) & set(test.files)
    assert "first 80% train" in train.description  # the sample's partition file lists only train images
    attrs = train.labels["attributes"]
    assert attrs.shape == (160, 40) and set(np.unique(attrs)) <= {0, 1}
    names = train.names["attributes"]
    assert names[20] == "Male" and len(names) == 40
    # 000002.jpg: the row in the file says Male -1, Bags_Under_Eyes 1
    first = train.files.index("000002.jpg")
    assert attrs[first, names.index("Male")] == 0 and attrs[first, names.index("Bags_Under_Eyes")] == 1
    assert train.labels["identity"][first] == 2937


def test_celeba_official_partition_and_nested_kaggle_layout(celeba_dir, tmp_path):
    files = copy_celeba(celeba_dir, tmp_path / "flat")
    # the layout of the official zip / Kaggle copy: img_align_celeba/img_align_celeba/
    nested = tmp_path / "nested"
    copy_celeba(celeba_dir, nested)
    os.rename(nested / "img_align_celeba", tmp_path / "inner")
    os.makedirs(nested / "img_align_celeba")
    os.rename(tmp_path / "inner", nested / "img_align_celeba" / "img_align_celeba")
    for root in (tmp_path / "flat", nested):
        with open(root / "list_eval_partition.txt", "w") as f:
            f.writelines(f"{name} {0 if i < 12 else 1 if i < 15 else 2}\n" for i, name in enumerate(files))
        sets = {s: data.load_dataset("celeba", str(root), s, 32, CROP) for s in ("train", "valid", "test")}
        assert [len(sets[s]) for s in ("train", "valid", "test")] == [12, 3, 5]
        assert "official partition" in sets["test"].description
        assert sets["test"].files == files[15:]


def test_missing_celeba_names_the_files_and_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.load_dataset("celeba", str(tmp_path), "train")
    message = str(e.value)
    for needle in ("img_align_celeba", "list_attr_celeba.txt", "kaggle", "unzip", str(tmp_path)):
        assert needle in message


def test_corrupt_and_truncated_jpegs_are_named(celeba_dir, tmp_path):
    files = copy_celeba(celeba_dir, tmp_path / "c", n=6)
    bad = tmp_path / "c" / "img_align_celeba" / files[2]
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match=files[2] + ".*corrupt or truncated"):
        data.load_dataset("celeba", str(tmp_path / "c"), "all", 32, CROP)
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match=files[2]):
        data.load_dataset("celeba", str(tmp_path / "c"), "all", 32, CROP)


def test_attribute_file_errors_name_file_and_line(celeba_dir, tmp_path):
    copy_celeba(celeba_dir, tmp_path / "c", n=6)
    path = tmp_path / "c" / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:4] + [" ".join(lines[4].split()[:-2])] + lines[5:]) + "\n")
    with pytest.raises(ValueError, match=r"list_attr_celeba.txt line 5: 38 values for 40 attributes"):
        data.load_dataset("celeba", str(tmp_path / "c"), "all", 32, CROP)
    path.write_text("\n".join(["7"] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match=r"line 1: says 7 images but 6 rows follow"):
        data.load_dataset("celeba", str(tmp_path / "c"), "all", 32, CROP)
    path.write_text("\n".join(["7"] + lines[1:] + [lines[2].replace(lines[2].split()[0], "999999.jpg")]) + "\n")
    with pytest.raises(ValueError, match=r"labels 999999.jpg, which is not in"):
        data.load_dataset("celeba", str(tmp_path / "c"), "all", 32, CROP)


def test_images_without_attribute_rows_are_an_error(celeba_dir, tmp_path):
    copy_celeba(celeba_dir, tmp_path / "c", n=6)
    shutil.copy(os.path.join(celeba_dir, "img_align_celeba", "000002.jpg"),
                tmp_path / "c" / "img_align_celeba" / "999998.jpg")
    with pytest.raises(ValueError, match=r"no row for 1 images.*999998.jpg"):
        data.load_dataset("celeba", str(tmp_path / "c"), "all", 32, CROP)


def test_crop_box_outside_the_image_is_an_error(celeba_dir, tmp_path):
    copy_celeba(celeba_dir, tmp_path / "c", n=2)
    with pytest.raises(ValueError, match="does not fit"):
        data.load_dataset("celeba", str(tmp_path / "c"), "all", 32, (200, 0, 108, 108))


def test_mnist_idx_reader_and_its_errors(mnist_dir, tmp_path):
    train = data.load_dataset("mnist", mnist_dir, "train", 28)
    test = data.load_dataset("mnist", mnist_dir, "test", 28)
    assert train.images.shape == (800, 28, 28, 1) and len(test) == 200
    everything = data.read_idx(os.path.join(mnist_dir, "t10k-labels-idx1-ubyte.gz"))
    train_index, test_index = data.mnist_sample_split(1000, "train"), data.mnist_sample_split(1000, "test")
    assert not set(train_index) & set(test_index) and len(set(train_index) | set(test_index)) == 1000
    assert train_index.max() > 900 and test_index.min() < 100  # a seeded shuffle, not a cut in file order
    assert train.labels["class"].tolist() == everything[train_index].tolist()
    assert "seeded 80% of t10k" in train.description
    assert train.images.max() == 255 and train.images.min() == 0
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz"):
        data.load_dataset("mnist", str(tmp_path), "train")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(os.path.join(mnist_dir, name), tmp_path / name)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 1000, 28, 28) + b"\0" * 100)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: header says shape"):
        data.load_dataset("mnist", str(tmp_path), "test")


def test_folder_per_class_reader_splits_within_each_class(identities_dir):
    train = data.load_dataset("folder", identities_dir, "train", 32)
    test = data.load_dataset("folder", identities_dir, "test", 32)
    assert len(train.names["class"]) == 10 and (len(train), len(test)) == (50, 10)
    assert np.bincount(test.labels["class"]).tolist() == [1] * 10
    assert not set(train.files) & set(test.files)


def test_cache_is_reused_memory_mapped_and_keyed_by_size(celeba_dir, tmp_path):
    first = data.load_dataset("celeba", celeba_dir, "test", 16, CROP, cache_dir=str(tmp_path))
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert len(cached) == 2 and cached[0].endswith(".json") and cached[1].endswith(".npy")
    again = data.load_dataset("celeba", celeba_dir, "test", 16, CROP, cache_dir=str(tmp_path))
    assert isinstance(again.images, np.memmap) and np.array_equal(first.images, again.images)
    direct = data.decode_image(os.path.join(celeba_dir, "img_align_celeba", first.files[0]), CROP, 16)
    assert np.array_equal(direct, again.images[0])
    data.load_dataset("celeba", celeba_dir, "test", 24, CROP, cache_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 4


def test_batches_are_a_pure_function_of_step_and_shards_cover_the_set(celeba_dir):
    train = data.load_dataset("celeba", celeba_dir, "train", 16, CROP)
    shards = [data.Batches(train, 10, seed=3, device=torch.device("cpu"), rank=r, world_size=2,
                           label_keys=("attributes",)) for r in range(2)]
    assert shards[0].steps_per_epoch == 8
    seen = torch.cat([s.indices(step) for s in shards for step in range(8)])
    assert sorted(seen.tolist()) == list(range(160))  # one epoch covers every image once
    x, labels = shards[0].get(5)
    assert x.shape == (10, 3, 16, 16) and -1.0 <= x.min() and x.max() <= 1.0
    assert labels["attributes"].shape == (10, 40)
    fresh = data.Batches(train, 10, seed=3, device=torch.device("cpu"), rank=0, world_size=2)
    assert torch.equal(fresh.get(5)[0], x) and not torch.equal(fresh.get(13)[0], x)
    assert not torch.equal(shards[0].indices(0), shards[0].indices(8))  # a new order each epoch
    # the GPU path (images resident on the device, channels_last) serves the same batches
    resident = data.Batches(train, 10, seed=3, device=torch.device("cpu"), rank=0, world_size=2,
                            on_device=True, channels_last=True)
    x_resident = resident.get(5)[0]
    assert torch.equal(x_resident, x) and x_resident.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="needs at least 200 images"):
        data.Batches(train, 100, 0, torch.device("cpu"), world_size=2)


def test_folder_classes_skip_hidden_and_empty_folders_and_identity_rows_are_unique(tmp_path, capsys):
    from PIL import Image
    for name in ("alice", "bob", ".ipynb_checkpoints", "empty"):
        (tmp_path / "faces" / name).mkdir(parents=True)
    for name in ("alice", "bob", ".ipynb_checkpoints"):
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "faces" / name / f"{i}.jpg")
    train = data.load_folder(str(tmp_path / "faces"), "train", 8, cache_dir=str(tmp_path / "cache"))
    assert train.names["class"] == ["alice", "bob"]
    assert "skipping 1 sub-folder(s) without images: empty" in capsys.readouterr().err
    ids = tmp_path / "identity_CelebA.txt"
    ids.write_text("000001.jpg 7\n000002.jpg 8\n000001.jpg 9\n")
    with pytest.raises(ValueError, match="lists 000001.jpg twice .lines 1 and 3."):
        data.read_two_column(str(ids))


def test_a_truncated_cache_file_is_named_and_rebuilt(tmp_path, capsys):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "celeba")
    first = np.array(data.load_celeba(root, "test", 16, None, str(tmp_path), verbose=False).images)  # a copy, not the map
    (cache,) = [f for f in os.listdir(tmp_path) if f.endswith(".npy")]
    with open(tmp_path / cache, "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / cache) // 2)
    again = data.load_celeba(root, "test", 16, None, str(tmp_path), verbose=False).images
    assert np.array_equal(first, np.asarray(again))
    assert f"the image cache {tmp_path / cache} is damaged (truncated?): rebuilding it" in capsys.readouterr().err


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    """PIL's convert('RGB') clips 16-bit greyscale at 255 (a mean of 255 for any real image);
    decode_image scales 0..65535 onto 0..255 instead."""
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    decoded = data.decode_image(str(tmp_path / "g16.png"), None, 64)
    assert decoded.shape == (64, 64, 3) and decoded.dtype == np.uint8
    assert decoded[:, 0].max() <= 1 and decoded[:, -1].min() >= 254          # the ends of the ramp
    assert abs(decoded.mean() - 127.5) < 2                                       # not pure white
    Image.fromarray(np.zeros((8, 8), np.int32) + 70000, "I").save(tmp_path / "i32.tif")
    with pytest.raises(ValueError, match="32-bit integer"):
        data.decode_image(str(tmp_path / "i32.tif"), None, 8)


def test_an_image_replaced_by_one_of_the_same_byte_size_is_decoded_again(tmp_path):
    """The cache key holds each file's modification time: a same-size replacement is not read
    from the old pixels."""
    folder = tmp_path / "faces" / "a"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(folder / f"{i}.bmp")  # BMP: byte size fixed by shape
    first = np.array(data.load_folder(str(tmp_path / "faces"), "all", 8, cache_dir=str(tmp_path / "c"),
                                      verbose=False).images)
    size = os.path.getsize(folder / "0.bmp")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(folder / "0.bmp")
    os.utime(folder / "0.bmp", ns=(os.stat(folder / "0.bmp").st_atime_ns, os.stat(folder / "0.bmp").st_mtime_ns + 10 ** 9))
    assert os.path.getsize(folder / "0.bmp") == size
    again = np.asarray(data.load_folder(str(tmp_path / "faces"), "all", 8, cache_dir=str(tmp_path / "c"),
                                        verbose=False).images)
    assert not np.array_equal(first, again) and again[0, ..., 2].min() == 255 and again[0, ..., 0].max() == 0


def test_an_mnist_label_outside_0_to_9_is_named_with_its_position(mnist_dir, tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(os.path.join(mnist_dir, name), tmp_path / name)
    labels = data.read_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz")).copy()
    labels[5] = 12
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)) + labels.tobytes())
    with pytest.raises(ValueError, match="label 12 at position 5 is not a digit 0-9"):
        data.load_dataset("mnist", str(tmp_path), "test")


def test_ctrl_c_during_the_cache_build_is_one_line_exit_130_and_no_temp_file(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "faces" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8)).save(folder / f"{i}.png")
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(data, "decode_all", interrupted)
    with pytest.raises(SystemExit) as stop:
        data.load_folder(str(tmp_path / "faces"), "all", 8, cache_dir=str(tmp_path / "c"), verbose=False)
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "stopped by Ctrl-C while building the image cache; the partial file was removed, run the same command "
        "to build it again"]
    assert not [f for f in os.listdir(tmp_path / "c") if f.endswith((".tmp", ".npy"))]


def test_a_partition_code_outside_0_to_2_is_named(celeba_dir, tmp_path):
    files = copy_celeba(celeba_dir, tmp_path / "c", n=6)
    with open(tmp_path / "c" / "list_eval_partition.txt", "w") as f:
        f.writelines(f"{name} {7 if i == 3 else 0 if i < 4 else 2}\n" for i, name in enumerate(files))
    with pytest.raises(ValueError, match=f"1 image.s. have a partition code outside 0 .train.*{files[3]} 7"):
        data.load_dataset("celeba", str(tmp_path / "c"), "train", 32, CROP)


def test_a_folder_set_counts_the_files_and_sub_folders_it_leaves_out(tmp_path, capsys):
    for name in ("alice", "bob"):
        (tmp_path / "faces" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8)).save(tmp_path / "faces" / name / f"{i}.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "faces" / "alice" / "wave.gif")
    (tmp_path / "faces" / "bob" / "more").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "faces" / "bob" / "more" / "2.jpg")
    train = data.load_folder(str(tmp_path / "faces"), "all", 8, cache_dir=str(tmp_path / "c"))
    assert len(train) == 4
    err = capsys.readouterr().err
    assert "skipping 1 sub-folder(s) (classes are not nested; move their images up): bob/more" in err
    assert "skipping 1 file(s) of another format (read: .jpg" in err and "alice/wave.gif" in err


def test_a_dangling_symlink_in_the_data_is_named_with_its_target(tmp_path):
    (tmp_path / "faces" / "a").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "faces" / "a" / f"{i}.png")
    os.symlink(tmp_path / "elsewhere.png", tmp_path / "faces" / "a" / "3.png")
    with pytest.raises(FileNotFoundError, match=r"3.png is listed in the data set but cannot be opened .a symbolic "
                                                r"link to .*elsewhere.png, which does not exist"):
        data.load_folder(str(tmp_path / "faces"), "all", 8, cache_dir=str(tmp_path / "c"), verbose=False)
