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
        return cmma.resolve_defaults(cmma.Config(dataset="celeba", image_size=32, amp=True))
    if name == "vae_began":
        return vae_began.resolve_defaults(vae_began.Config(dataset="celeba", image_size=32, filters=8, latent_dim=16,
                                                           amp=True))
    return disentangled_vae.resolve_defaults(disentangled_vae.Config(
        dataset="folder", data_dir=identities, filters=8, z_s_dim=8, z_u_dim=8, batch_size=8, amp=True))


def tiny_stepper(name: str, faces: str, identities: str, channels_last: bool = False, images: int = 8,
                 jitter: float = 0.0):
    """(model, step(i) -> loss terms) on a small config of `name` and one real batch of `images`
    faces, each pixel moved by jitter x a seeded N(0, 1) draw."""
    cfg = tiny_config(name, identities)
    if name == "disentangled_vae":
        split, key = data.load_dataset("folder", identities, "train", 64, None, None, verbose=False), "class"
    else:
        split, key = data.load_celeba(faces, "train", cfg.image_size, None, None, verbose=False), "attributes"
    x, labels = data.Batches(split, images, 0, CPU, label_keys=(key,)).get(0)
    x = x + jitter * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    n_labels = 40 if key == "attributes" else int(split.labels[key].max()) + 1
    model, step, _ = bench.build(name, cfg, n_labels, CPU)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return model, lambda i: step(lambda: (x, labels[key]), i)


@pytest.mark.parametrize("name", list(KEY))
def test_bf16_autocast_step_matches_fp32_and_keeps_fp32_weights(name, monkeypatch, celeba_dir, identities_dir):
    # 2 faces: bf16 convolutions on a CPU without bf16 units take seconds per step
    _, step = tiny_stepper(name, celeba_dir, identities_dir, images=2)
    fp32 = [step(i) for i in range(2)]
    monkeypatch.setattr(common, "amp_dtype", lambda device, enabled: torch.bfloat16 if enabled else None)
    with common.autocast(CPU, True):
        assert torch.nn.functional.linear(torch.ones(1, 2), torch.ones(3, 2)).dtype == torch.bfloat16
    model, step = tiny_stepper(name, celeba_dir, identities_dir, images=2)
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
    """Two steps agree to 1e-3, or to 10x what a 1e-6 change of the input pixels moves them: Adam's
    first steps are about lr x sign(gradient), so a deep network's (disentangled_vae's VGG16-BN)
    rounding-level differences grow to percents within a step, in either layout."""
    runs = []
    for channels_last, jitter in ((False, 0.0), (False, 1e-6), (True, 0.0)):
        step = tiny_stepper(name, celeba_dir, identities_dir, channels_last, jitter=jitter)[1]  # seeds torch
        runs.append([step(i) for i in range(2)])
    for a, floor, b in zip(*runs):
        for k in a:
            a_k, b_k, noise = float(a[k]), float(b[k]), abs(float(floor[k]) - float(a[k]))
            assert abs(b_k - a_k) <= max(1e-3 * abs(a_k) + 1e-4, 10 * noise), (k, a_k, b_k, noise)


@pytest.mark.parametrize("name", ["vae_began", "disentangled_vae"])
def test_hand_routed_gradients_keep_each_parameters_layout(name, identities_dir, monkeypatch):
    """vae_began and disentangled_vae take gradients with torch.autograd.grad and assign them
    by hand. `.backward()` would give each gradient its parameter's memory layout; a backend may
    return an NCHW gradient for a channels_last weight, which CUDA's fused Adam refuses. Here
    autograd.grad returns NCHW copies on purpose: every .grad must still match its parameter's
    strides, and a fused Adam step (CPU) runs on them."""
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: tuple(
        None if g is None else g.contiguous() for g in real_grad(*a, **k)))
    cfg = tiny_config(name, identities_dir)
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    if name == "vae_began":
        model = vae_began.VAEBEGAN(cfg).to(memory_format=torch.channels_last)
        opts = {n: torch.optim.Adam(net.parameters(), fused=True) for n, net in model.networks().items()}
        vae_began.train_step(model, opts, vae_began.Controller.start((1e-3, 0, 0), CPU), [x], cfg, CPU)
    else:
        model = disentangled_vae.DisentangledVAE(cfg, 3).to(memory_format=torch.channels_last)
        opts = {n: torch.optim.Adam(ps, fused=True) for n, ps in model.groups().items()}
        disentangled_vae.stage2_step(model, opts, [(x, torch.tensor([0, 1]))], cfg, CPU)
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert any(p.stride() != p.contiguous().stride() for p in convs)  # the weights really are channels_last
    assert all(p.grad is None or p.grad.stride() == p.stride() for p in model.parameters())


def test_flop_count_is_forward_and_backward_only_and_leaves_the_model_untouched():
    """bench.flops_per_step counts one step's forward and backward (a linear layer: 2 N I O for
    the forward, twice that for the backward) and runs no optimizer step."""
    layer = torch.nn.Linear(8, 4, bias=False)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()

    def step(next_batch, i):
        opt.zero_grad()
        layer(next_batch()).sum().backward()
        opt.step()
    flops = bench.flops_per_step(step, lambda: torch.randn(16, 8))
    assert flops == 2 * (2 * 16 * 8 * 4)  # the forward, and the weight's gradient (the input needs none)
    assert torch.equal(layer.weight, before)  # the optimizer did not step
    step(lambda: torch.randn(16, 8), 1)
    assert not torch.equal(layer.weight, before)  # and steps again afterwards


@pytest.mark.parametrize("name", list(KEY))
def test_a_training_step_reads_nothing_back_to_the_host(name, celeba_dir, identities_dir):
    """No .item(), bool() of a tensor, nonzero (boolean masks), masked_select or unique in any
    script's training step (`bench.HostReads`): each would stall the host until the GPU drains
    its queue. Found on the CPU by the ops themselves (Lr-LiVAE's L-GM used a boolean mask and
    F.one_hot, whose range check reads the labels' min and max: two per L-GM call)."""
    _, step = tiny_stepper(name, celeba_dir, identities_dir)
    step(0)
    assert bench.host_reads_per_step(lambda nb, i: step(i), None) == []
