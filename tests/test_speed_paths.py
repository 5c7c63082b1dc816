"""The GPU speed paths, checked on CPU in each script's own training step.

bf16 autocast: CPU autocast casts the same op classes (convolutions, matmuls) as CUDA's, so a
dtype mismatch or a loss computed in bf16 shows here too. channels_last: a `.view` where a
`.reshape` is needed, or a layout-dependent result, shows on CPU as on the GPU.
(torch.compile is checked by `benchmarks/bench.py --device cpu --quick --compile on`: minutes.)
"""
import os
import sys

import pytest
import torch

import cmma
import common
import data
import disentangled_vae
import vae_began
import vlae

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bench  # noqa: E402  (its per-script adapters: model, optimizers and the script's own train_step)

CPU = torch.device("cpu")
# the term each script's reconstruction rests on
KEY = {"vlae": "recon", "cmma": "log_px", "vae_began": "L_d", "disentangled_vae": "L_rec"}


def tiny_config(name: str, identities: str):
    """A small config of `name` with --amp (the GPU default)."""
    if name == "vlae":
        return vlae.resolve_defaults(vlae.Config(dataset="celeba", image_size=32, amp=True))
    if name == "cmma":
        return cmma.resolve_defaults(cmma.Config(dataset="celeba", amp=True))
    if name == "vae_began":
        return vae_began.resolve_defaults(vae_began.Config(dataset="celeba", image_size=32, filters=8, latent_dim=16,
                                                           amp=True))
    return disentangled_vae.resolve_defaults(disentangled_vae.Config(
        dataset="folder", data_dir=identities, arch="dcgan", filters=8, z_s_dim=8, z_u_dim=8, batch_size=8, amp=True))


def tiny_stepper(name: str, faces: str, identities: str, channels_last: bool = False):
    """(model, step(i) -> loss terms) on a small config of `name` and one real batch of 8 faces."""
    cfg = tiny_config(name, identities)
    if name == "disentangled_vae":
        split, key = data.load_dataset("folder", identities, "train", 64, None, None, verbose=False), "class"
    else:
        split, key = data.load_celeba(faces, "train", cfg.image_size, None, None, verbose=False), "attributes"
    x, labels = data.Batches(split, 8, 0, CPU, label_keys=(key,)).get(0)
    n_labels = 40 if key == "attributes" else int(split.labels[key].max()) + 1
    model, step, _ = bench.build(name, cfg, n_labels, CPU)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return model, lambda i: step(lambda: (x, labels[key]), i)


@pytest.mark.parametrize("name", list(KEY))
def test_bf16_autocast_step_matches_fp32_and_keeps_fp32_weights(name, monkeypatch, celeba_dir, identities_dir):
    _, step = tiny_stepper(name, celeba_dir, identities_dir)
    fp32 = [step(i) for i in range(2)]
    monkeypatch.setattr(common, "amp_dtype", lambda device, enabled: torch.bfloat16 if enabled else None)
    with common.autocast(CPU, True):
        assert torch.nn.functional.linear(torch.ones(1, 2), torch.ones(3, 2)).dtype == torch.bfloat16
    model, step = tiny_stepper(name, celeba_dir, identities_dir)
    bf16 = [step(i) for i in range(2)]
    for terms in bf16:
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in terms.values())
        assert all(v.dtype == torch.float32 for v in terms.values() if isinstance(v, torch.Tensor))
    first32, first16 = float(fp32[0][KEY[name]]), float(bf16[0][KEY[name]])
    assert first16 != first32                                  # autocast did run in bf16
    assert first16 == pytest.approx(first32, rel=0.02)         # ... and the losses stay in float32
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", list(KEY))
def test_channels_last_step_equals_nchw_step(name, celeba_dir, identities_dir):
    _, step = tiny_stepper(name, celeba_dir, identities_dir)
    nchw = [step(i) for i in range(2)]
    _, step = tiny_stepper(name, celeba_dir, identities_dir, channels_last=True)
    nhwc = [step(i) for i in range(2)]
    for a, b in zip(nchw, nhwc):
        for k in a:
            assert float(b[k]) == pytest.approx(float(a[k]), rel=1e-3, abs=1e-4), k
