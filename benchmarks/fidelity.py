"""FID, KID and Inception Score of a trained run's samples, through torch-fidelity (the metrics extra).

None of the four papers reports FID or KID; vae_began's Table 1 reports the Inception Score on
CIFAR-10. These numbers move by whole points with the Inception weights, the resize to 299 px,
the uint8 quantisation and the split protocol, and torchvision's Inception gives other values; so
they come from torch-fidelity, whose TF-Inception port matches the reference TF code (Heusel et
al. 2017 for FID, Salimans et al. 2016 for IS, Binkowski et al. 2018 for KID). Samples reach it as
uint8, the bytes a PNG would hold, through its generative-model wrapper (no PNG round trip).

    pip install -r requirements-metrics.txt
    python benchmarks/fidelity.py vlae --checkpoint runs/vlae-celeba --fid --kid        # RUN/fidelity.json
    python benchmarks/fidelity.py vae_began --checkpoint runs/vae_began-cifar10-32 --isc
    python benchmarks/fidelity.py vae_began --real-isc --dataset cifar10 --data-dir data/cifar10 --image-size 32

Each script's samples are drawn as its paper draws them (`GENERATORS` below): vlae decodes every
layer's z_l ~ N(0, I); vae_began decodes its prior (N(0, I), or U(-1, 1) with --noise uniform);
cmma draws whole attribute rows of the held-out faces; disentangled_vae draws classes as often as
the held-out images have them. The real images are the held-out split (CIFAR-10: train, its
protocol), their Inception features cached per data set, split, size and file list.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib
import os
import sys
from typing import Any

import numpy as np
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import common  # noqa: E402
import data  # noqa: E402

SCRIPTS = ("vlae", "vae_began", "cmma", "disentangled_vae")


@dataclasses.dataclass
class Options:
    """What to score and how (the flags of this command)."""
    fid: bool = common.arg(False, "Frechet Inception Distance of --fidelity-samples samples against the real split")
    kid: bool = common.arg(False, "Kernel Inception Distance, unbiased (100 subsets of up to 1,000 images)")
    isc: bool = common.arg(False, "Inception Score of the samples (10 splits)")
    real_isc: bool = common.arg(False, "the Inception Score of the real split's images instead, to check the "
                                       "protocol (CIFAR-10 train: 11.24); needs no checkpoint")
    fidelity_samples: int = common.arg(50_000, "samples drawn (the protocol's 50,000; fewer give a biased FID and a "
                                               "lower IS, see the README)")
    fidelity_split: str = common.arg("", "real images: train or test (default: train for CIFAR-10, as its "
                                         "protocol; else the held-out test split)", choices=("", "train", "test"))
    feature_extractor: str = common.arg("inception-v3-compat", "torch-fidelity's feature extractor (inception-v3-"
                                                               "compat: the TF Inception behind the papers' numbers)")
    inception_weights: str = common.arg("", "a local copy of weights-inception-2015-12-05-6726825d.pth, for "
                                            "machines without network (where to get it: README, Evaluation)")
    checkpoint: str = common.arg("", "the run folder or its checkpoint.pt; fidelity.json is written beside it")
    data_dir: str = common.arg("", "the data set's folder, where the run's saved one is not there from here")
    cache_dir: str = common.arg("", "decoded images and, under fidelity/, the real features (default: "
                                    "$FACE_VAE_CACHE or ~/.cache/face-vaes)")
    device: str = common.arg("auto", "auto (cuda if present), cpu, cuda or cuda:N")
    seed: int = common.arg(0, "seed of the noise and the labels drawn")
    dataset: str = common.arg("", "--real-isc: the data set (as the script's --dataset)")
    image_size: int = common.arg(0, "--real-isc: the image side (0: the script's default)")
    out: str = common.arg("", "where fidelity.json (eval_real_isc.json) goes (default: the run folder; with "
                              "--real-isc, the script's default run folder)")


# These numbers move by whole points with the Inception weights, the resize to 299 px, the uint8
# quantisation and the split protocol, and torchvision's Inception gives other values; so they come
# from torch-fidelity, whose TF-Inception port matches the reference TF code (Heusel et al. 2017
# for FID, Salimans et al. 2016 for IS, Binkowski et al. 2018 for KID). Samples reach it as uint8,
# the bytes a PNG would hold, through its generative-model wrapper (no PNG round trip).
METRICS_EXTRA = "pip install -r requirements-metrics.txt"
INCEPTION = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch.hub's name: the suffix starts its SHA-256
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
INCEPTION_SHA256_PREFIX = "6726825d"
FIDELITY_BATCH = 128  # images per forward of the feature extractor
ISC_SPLITS, KID_SUBSETS, KID_SUBSET_SIZE = 10, 100, 1000  # the protocol's values


def import_torch_fidelity():
    """The torch_fidelity module, imported only when a metric is asked for. Raises ValueError with
    the one pip command to run when it is missing, or when its torchvision was built for another
    torch (which fails at import with 'operator torchvision::nms does not exist')."""
    try:
        import torch_fidelity
    except ImportError as e:
        raise ValueError(f"--fid, --kid and --isc need the metrics extra, which is not installed ({e}): run "
                         f"`{METRICS_EXTRA}`") from None
    except RuntimeError as e:
        raise ValueError(f"torchvision does not match torch {torch.__version__} ({e}): run `{METRICS_EXTRA}`, or "
                         f"install the torchvision built for your torch from the index you took torch from") from None
    return torch_fidelity


def check_fidelity_ready(cfg: Any) -> None:
    """Raise ValueError (one line, with the fix) unless torch-fidelity imports, knows
    --feature-extractor, and has the Inception weights (see inception_weights)."""
    known = import_torch_fidelity().registry.FEATURE_EXTRACTORS_REGISTRY
    if cfg.feature_extractor not in known:
        raise ValueError(f"--feature-extractor {cfg.feature_extractor}: torch-fidelity has no such extractor; choose "
                         f"one of {', '.join(sorted(known))}")
    inception_weights(cfg)


def fidelity_requested(cfg: Any) -> bool:
    return cfg.fid or cfg.kid or cfg.isc


def fidelity_split(cfg: Any) -> str:
    """The real images' split: --fidelity-split, else CIFAR-10's train (its IS / FID protocol), else test."""
    return cfg.fidelity_split or ("train" if cfg.dataset == "cifar10" else "test")


def inception_weights(cfg: Any) -> str | None:
    """The path of the Inception weights for torch-fidelity (None for another --feature-extractor).

    --inception-weights PATH is checked against the file's SHA-256 prefix. Without it, torch.hub's
    cache ($TORCH_HOME/hub/checkpoints) is used, downloading the file there first if needed.
    Raises FileNotFoundError / ValueError naming the file, the URL and the flag when neither works."""
    if cfg.feature_extractor != INCEPTION:
        return None
    get = f"download {INCEPTION_URL} on a machine with network and pass --inception-weights PATH"
    if cfg.inception_weights:
        if not os.path.isfile(cfg.inception_weights):
            raise FileNotFoundError(f"--inception-weights {cfg.inception_weights}: no such file; {get}")
        stat = os.stat(cfg.inception_weights)
        digest = file_sha256(os.path.abspath(cfg.inception_weights), stat.st_size, stat.st_mtime_ns)
        if not digest.startswith(INCEPTION_SHA256_PREFIX):
            raise ValueError(f"--inception-weights {cfg.inception_weights} is not {INCEPTION_FILE}: its SHA-256 "
                             f"starts {digest[:8]}, not {INCEPTION_SHA256_PREFIX}; {get}")
        return cfg.inception_weights
    path = os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_FILE)
    if not os.path.isfile(path):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.hub.download_url_to_file(INCEPTION_URL, path, hash_prefix=INCEPTION_SHA256_PREFIX, progress=False)
        except Exception as e:  # no route (URLError), a proxy's page (hash mismatch), a read-only home...
            raise ValueError(f"the Inception weights are not in {os.path.dirname(path)} and could not be downloaded "
                             f"({type(e).__name__}: {e}); {get}") from None
    return path


@functools.lru_cache(maxsize=4)
def file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """The SHA-256 of a file, hashed once per (path, size, mtime): the up-front check and each
    scored run read the weights' 96 MB only once."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


class _Uint8Samples(nn.Module):
    """torch-fidelity's generator: noise (B, z_size) -> (B, 3, H, W) uint8. `generate` maps the noise
    (on `device`) to images in [-1, 1]; greyscale is replicated to 3 channels. For the progress
    line a batch counts as done when torch-fidelity asks for the next one (after its features),
    the last batch when it is drawn."""

    def __init__(self, generate, device: torch.device, progress: "common.Progress"):
        super().__init__()
        self.generate, self.device, self.progress, self.pending = generate, device, progress, 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.progress.update(self.pending)
        images = common.quantise(self.generate(z.to(self.device)))
        self.pending = len(images)
        if self.progress.done + self.pending >= self.progress.total:
            self.progress.update(self.pending)
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class _RealImages(torch.utils.data.Dataset):
    """An ImageSet's (N, H, W, C) uint8 images as the (3, H, W) uint8 tensors torch-fidelity reads;
    progress (rate, ETA) is shown from the first image read, under `label`."""

    def __init__(self, images: np.ndarray, label: str, announce: bool = False):
        self.images, self.label, self.announce, self.next, self.progress = images, label, announce, 0, None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == self.next:  # count each image once (torch-fidelity reads image 0 first to check its type)
            self.progress = self.progress or common.Progress(self.label, len(self.images), announce=self.announce)
            self.next += 1
            self.progress.update()
        x = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1)
        return x.expand(3, -1, -1) if x.shape[0] == 1 else x


def real_cache_name(real: Any, dataset: str, split: str) -> str:
    """torch-fidelity's cache name of a real split: data set, split, size, count and a hash of the
    file list (so another folder, crop or subset never reads the wrong statistics)."""
    key = hashlib.sha1("\n".join(map(str, real.files)).encode()).hexdigest()[:10]
    return f"{dataset}-{split}-{real.images.shape[1]}px-{len(real)}-{key}"


def _fidelity(cfg: Any, device: torch.device, real: Any, split: str, **inputs) -> dict:
    """torch_fidelity.calculate_metrics with this project's protocol settings, as an eval.json entry:
    each value (IS and KID with their std over splits / subsets), the real split and its size, the
    feature extractor, its weights and the torch-fidelity version."""
    tf, weights = import_torch_fidelity(), inception_weights(cfg)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # torch-fidelity moves its networks with .cuda()
    metrics = tf.calculate_metrics(**inputs, cuda=device.type == "cuda", batch_size=FIDELITY_BATCH,
                                   feature_extractor=cfg.feature_extractor, feature_extractor_weights_path=weights,
                                   isc_splits=ISC_SPLITS, kid_subsets=KID_SUBSETS,
                                   cache_root=os.path.join(cfg.cache_dir or data.default_cache_dir(), "fidelity"),
                                   rng_seed=cfg.seed, verbose=False,
                                   save_cpu_ram=True)  # the real images are in memory already: no loader workers
    out = {"feature_extractor": cfg.feature_extractor, "torch_fidelity": tf.__version__, "weights": weights or "",
           "real": {"split": split, "images": len(real), "description": real.description}}
    if "inception_score_mean" in metrics:
        out["isc"] = {"mean": metrics["inception_score_mean"], "std": metrics["inception_score_std"],
                      "splits": ISC_SPLITS}
    if "frechet_inception_distance" in metrics:
        out["fid"] = metrics["frechet_inception_distance"]
    if "kernel_inception_distance_mean" in metrics:
        out["kid"] = {"mean": metrics["kernel_inception_distance_mean"], "std": metrics["kernel_inception_distance_std"],
                      "subsets": KID_SUBSETS, "subset_size": inputs["kid_subset_size"], "estimator": "unbiased"}
    if real.images.shape[-1] == 1:
        out["greyscale"] = "replicated to 3 channels (real and generated) before the feature extractor"
    return out


def sample_quality(cfg: Any, generate, z_size: int, held: Any, device: torch.device, labels: str = "",
                   z_type: str = "normal", load_split=None) -> dict:
    """FID, KID and IS (those of cfg.fid, cfg.kid, cfg.isc that are set) of cfg.fidelity_samples
    generated images against the real split `real`, through torch-fidelity.

    generate: z -> images. z is (B, z_size) float32 on `device`, drawn by torch-fidelity from
      `z_type` ('normal': N(0, I); 'uniform_0_1': U(0, 1)) with seed cfg.seed; the images are
      (B, C, H, W) in [-1, 1], C = 1 or 3, quantised to uint8 as a PNG would be.
    held: the held-out (test) ImageSet the caller's eval has loaded already, (N, H, W, C) uint8:
      the real images, unless --fidelity-split asks for another split, which load_split(cfg,
      split, verbose=False) (the script's reader) then reads. The real images' Inception features
      are cached in --cache-dir's fidelity/ per data set, split, size and file list.
    labels: how a conditional model drew its labels, recorded in the entry.
    Returns the eval.json entry (see _fidelity, plus the sample count and how they were drawn).
    FID is in squared feature units; KID likewise (x 1e3 in most tables); IS is exp(nats). Raises
    ValueError when the extra or the weights are missing (the message says how to get them) or
    when KID has fewer than 2 real images.
    """
    tf, n, split = import_torch_fidelity(), cfg.fidelity_samples, fidelity_split(cfg)
    real = held if split == "test" else load_split(cfg, split, verbose=False)
    samples = _Uint8Samples(generate, device, common.Progress("fidelity samples", n, "images", announce=True))
    model = tf.GenerativeModelModuleWrapper(samples, z_size, z_type, 0)
    inputs = dict(input1=model, input1_model_num_samples=n, isc=cfg.isc, fid=cfg.fid, kid=cfg.kid)
    if cfg.fid or cfg.kid:
        inputs.update(input2=_RealImages(real.images, f"fidelity real {split} images"),
                      input2_cache_name=real_cache_name(real, cfg.dataset, split),
                      kid_subset_size=min(KID_SUBSET_SIZE, n, len(real)))
    out = _fidelity(cfg, device, real, split, **inputs)
    out["samples"] = {"images": n, "z": f"{z_type} noise from torch-fidelity, rng_seed {cfg.seed}",
                      **({"labels": labels} if labels else {})}
    if n < 50_000 and (cfg.fid or cfg.isc):
        out["note"] = (f"{n} samples, not the protocol's 50,000: FID is biased upward and IS downward by a "
                       f"sample-size-dependent amount, so compare only with numbers at the same count")
    return out


def real_image_score(cfg: Any, load_split, device: torch.device) -> dict:
    """The Inception Score of the real split itself (10 splits), written to OUT/eval_real_isc.json:
    the check that the protocol is wired right (Salimans et al.'s CIFAR-10 train: 11.24). Same
    units and errors as sample_quality; load_split(cfg, split) is the script's reader."""
    split = fidelity_split(cfg)
    real = load_split(cfg, split)
    images = _RealImages(real.images, f"fidelity real {split} images", announce=True)
    result = _fidelity(cfg, device, real, split, input1=images,
                       input1_cache_name=real_cache_name(real, cfg.dataset, split), isc=True)
    common.write_json(os.path.join(cfg.out, "eval_real_isc.json"), result)
    return result


def fidelity_summary(record: dict) -> str:
    """One line of a sample_quality entry: 'IS 6.80 +- 0.09, FID 31.2, KID 0.021 +- 0.001 (50000 samples)'."""
    parts = ([f"IS {record['isc']['mean']:.3f} +- {record['isc']['std']:.3f}"] if "isc" in record else []) \
        + ([f"FID {record['fid']:.2f}"] if "fid" in record else []) \
        + ([f"KID {record['kid']['mean']:.4f} +- {record['kid']['std']:.4f}"] if "kid" in record else [])
    return ", ".join(parts) + f" ({record['samples']['images']} samples, {record['feature_extractor']})"


# ----------------------------------------------------------------------------------------------
# each paper's samples, drawn as its paper draws them: z -> images in [-1, 1]
# ----------------------------------------------------------------------------------------------
def vlae_samples(cfg, model, held) -> tuple:
    """decode(z_0..z_L), every layer's z_l ~ N(0, I)."""
    return lambda z: model.decode(list(z.split(model.latent_dims, 1))), sum(model.latent_dims), "normal", ""


def vae_began_samples(cfg, model, held) -> tuple:
    """G(z), z from the prior: N(0, I), or U(-1, 1) as 2u - 1 with --noise uniform (Table 1: IS on
    CIFAR-10, 50,000 samples, 10 splits)."""
    if cfg.noise == "uniform":
        return lambda u: model.generator(2 * u - 1), cfg.latent_dim, "uniform_0_1", ""
    return model.generator, cfg.latent_dim, "normal", ""


def cmma_samples(cfg, model, held) -> tuple:
    """Faces generated from attribute rows drawn whole from the held-out faces (so their
    correlations are kept); z's noise eps comes from torch-fidelity."""
    rows = torch.from_numpy(np.asarray(held.labels["attributes"], np.float32))
    g = torch.Generator().manual_seed(cfg.seed)

    def generate(eps: torch.Tensor) -> torch.Tensor:
        y = rows[torch.randint(len(rows), (len(eps),), generator=g)].to(eps.device)
        return model.generate(y, eps=eps) * 2 - 1  # [0, 1] -> [-1, 1]
    labels = f"attribute rows drawn uniformly from the {len(rows)} test faces (the held-out label distribution)"
    return generate, cfg.latent_dim, "normal", labels


def disentangled_vae_samples(cfg, model, held) -> tuple:
    """G(z~_s, z~_u): each class c drawn as often as the held-out images have it, z~_s ~ p(z_s|c)
    (the baseline: its label embedding), z~_u ~ N(0, I); one draw holds eps_s and z_u side by side."""
    if cfg.dataset == "toy":
        raise ValueError("--fid, --kid and --isc score images; the toy data set is 2-D points")
    classes = torch.from_numpy(held.labels["class"])
    g = torch.Generator().manual_seed(cfg.seed)

    def generate(z: torch.Tensor) -> torch.Tensor:
        c = classes[torch.randint(len(classes), (len(z),), generator=g)].to(z.device)
        eps_s, z_u = z.split([model.z_s_dim, model.z_u_dim], 1)
        return model.decode(model.sample_s(c, eps_s), z_u)
    labels = f"classes drawn uniformly from the {len(classes)} held-out images' labels (their class frequencies)"
    return generate, model.z_s_dim + model.z_u_dim, "normal", labels


GENERATORS = {"vlae": vlae_samples, "vae_began": vae_began_samples, "cmma": cmma_samples,
              "disentangled_vae": disentangled_vae_samples}


def load_run(script, opts: Options, device: torch.device) -> tuple:
    """(the run's config, its model in eval mode on `device`) from opts.checkpoint, through the
    script's own loader (which refuses another script's checkpoint, with the command to use)."""
    given = {k: getattr(opts, k) for k in ("checkpoint", "data_dir", "cache_dir", "out") if getattr(opts, k)}
    cfg = script.Config(**given, device=opts.device)
    if "," in opts.checkpoint:
        raise ValueError(f"--checkpoint {opts.checkpoint}: one run at a time (each writes its own fidelity.json)")
    return script.load_run(cfg, set(given) | {"device"}, device)[:2]


def main(argv: list | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="benchmarks/fidelity.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("script", choices=SCRIPTS, help="the script that trained the run")
    common.add_fields(parser, Options)
    args = vars(parser.parse_args(argv))
    script = importlib.import_module(args.pop("script"))
    opts = Options(**args)
    with common.user_errors():
        if not (opts.fid or opts.kid or opts.isc or opts.real_isc):
            raise ValueError("nothing to score: pass --fid, --kid, --isc or --real-isc")
        check_fidelity_ready(opts)
        device = common.pick_device(opts.device)
        if opts.real_isc:  # the protocol check: real images need no checkpoint
            cfg = script.resolve_defaults(script.Config(**{k: getattr(opts, k) for k in (
                "dataset", "data_dir", "cache_dir", "image_size", "out") if getattr(opts, k)}))
            return real_image_score(dataclasses.replace(opts, dataset=cfg.dataset, out=cfg.out),
                                    lambda _, split, verbose=True: script.load_split(cfg, split, verbose=verbose), device)
        cfg, model = load_run(script, opts, device)
        held = script.load_split(cfg, "test", verbose=False)
        generate, z_size, z_type, labels = GENERATORS[script.__name__](cfg, model, held)
        run_opts = dataclasses.replace(opts, dataset=cfg.dataset, cache_dir=cfg.cache_dir)
        with torch.no_grad():
            result = sample_quality(run_opts, generate, z_size, held, device, labels, z_type,
                                    lambda _, split, verbose=False: script.load_split(cfg, split, verbose=verbose))
        common.write_json(os.path.join(cfg.out, "fidelity.json"), result, fidelity_summary(result))
        return result


if __name__ == "__main__":
    main()
