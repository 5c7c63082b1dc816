"""How fast does a training batch arrive? The decoded uint8 cache against decoding JPEGs.

    python benchmarks/cache_speed.py --data-dir tests/data/celeba
    python benchmarks/cache_speed.py --data-dir ../shared/data/celeba --workers 2

(a) the usual path: a torch DataLoader whose workers open, crop and resize every JPEG with PIL,
    every epoch (what pytorch/examples-style code does);
(b) this project's path: `data.Batches` indexing the memory-mapped uint8 cache.
Both produce (B, 3, 64, 64) float batches in [-1, 1] on the CPU; the table is images/s.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402

CROP = (55, 35, 108, 108)


class JpegDataset(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(data.decode_image(self.paths[i], CROP, 64))


def time_jpeg(paths, batch_size, workers, epochs):
    loader = torch.utils.data.DataLoader(JpegDataset(paths), batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for u8 in loader:
            seen += len(data.to_float_images(u8))
    return seen / (time.perf_counter() - start)


def time_cache(images, batch_size, steps):
    batches = data.Batches(images, batch_size, 0, torch.device("cpu"))
    batches.get(0)
    start = time.perf_counter()
    for step in range(steps):
        batches.get(step)
    return steps * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="tests/data/celeba")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    images = data.load_dataset("celeba", args.data_dir, "all", 64, CROP)
    image_dir = data.find_celeba_images(args.data_dir)
    paths = [os.path.join(image_dir, f) for f in images.files]
    batch = min(args.batch_size, len(paths))
    jpeg = time_jpeg(paths, batch, args.workers, args.epochs)
    cached = time_cache(images, batch, steps=max(50, args.epochs * len(paths) // batch))
    print(f"| path | images/s ({len(paths)} CelebA faces, batch {batch}, {os.cpu_count()} cores) |")
    print("|---|---|")
    print(f"| (a) DataLoader, PIL decode every epoch, {args.workers} workers | {jpeg:,.0f} |")
    print(f"| (b) decoded uint8 cache, memory-mapped | {cached:,.0f} |")
    print(f"speed-up: {cached / jpeg:.0f}x")


if __name__ == "__main__":
    main()
