"""The GPU speed paths, checked on CPU in each script's own training step.

bf16 autocast: CPU autocast casts the same op classes (convolutions, matmuls) as CUDA's, so a
dtype mismatch or a loss computed in bf16 shows here too. channels_last: a `.view` where a
`.reshape` is needed, or a layout-dependent result, shows on CPU as on the GPU.
(torch.compile is checked by `benchmarks/bench.py --device cpu --quick --compile on`: minutes.)
"""
import dataclasses

import pytest
import torch

import cmma
import common
import data
import disentangled_vae
import vae_began
import vlae

CPU = torch.device("cpu")
# the term each script's reconstruction rests on
KEY = {"vlae": "recon", "cmma": "log_px", "vae_began": "L_d", "disentangled_vae": "L_rec"}


def tiny_stepper(name: str, faces: str, identities: str, channels_last: bool = False):
    """(model, step(i) -> loss terms) on a small config of `name` and one real batch of 8 faces."""
    torch.manual_seed(0)
    if name == "disentangled_vae":
        cfg = disentangled_vae.resolve_defaults(disentangled_vae.Config(
            dataset="folder", data_dir=identities, arch="dcgan", filters=8, z_s_dim=8, z_u_dim=8, batch_size=8))
        split = data.load_dataset("folder", identities, "train", 64, None, None, verbose=False)
        x, labels = data.Batches(split, 8, 0, CPU, label_keys=("class",)).get(0)
        model = disentangled_vae.DisentangledVAE(cfg, int(split.labels["class"].max()) + 1)
    else:
        size = 64 if name == "cmma" else 32
        split = data.load_celeba(faces, "train", size, None, None, verbose=False)
        x, labels = data.Batches(split, 8, 0, CPU, label_keys=("attributes",)).get(0)
    if name == "vlae":
        cfg = vlae.resolve_defaults(vlae.Config(dataset="celeba", image_size=32))
        model = vlae.build_model(cfg)
    elif name == "cmma":
        cfg = cmma.resolve_defaults(cmma.Config(dataset="celeba"))
        model = cmma.build_model(cfg, 40)
    elif name == "vae_began":
        cfg = vae_began.resolve_defaults(vae_began.Config(dataset="celeba", image_size=32, filters=8, latent_dim=16))
        model = vae_began.VAEBEGAN(cfg)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    cfg = dataclasses.replace(cfg, amp=True)
    scaler = common.make_grad_scaler(CPU, cfg.amp)
    if name == "vlae":
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        return model, lambda i: vlae.train_step(model, optimizer, scaler, [x], cfg, i, CPU)
    if name == "cmma":
        optimizers, y = cmma.make_optimizers(model, cfg), labels["attributes"].float()
        return model, lambda i: cmma.train_step(model, optimizers, scaler, [((x + 1) / 2, y)], cfg, CPU)
    if name == "vae_began":
        optimizers, controller = vae_began.make_optimizers(model, cfg, CPU), vae_began.Controller.start((1e-3, 0, 0), CPU)
        return model, lambda i: vae_began.train_step(model, optimizers, controller, [x], cfg, CPU, None)
    optimizers = disentangled_vae.make_optimizers(model, cfg, CPU)
    return model, lambda i: disentangled_vae.train_step(model, optimizers, lambda _: (x, labels["class"]), i, cfg, CPU, None)


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
