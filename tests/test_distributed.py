"""Multi-process and gradient-accumulation equivalences, on CPU with gloo."""
import copy
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

import common
import vae_began
from zero_noise_run import zero_noise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(ROOT, "tests", "zero_noise_run.py")
CELEBA = os.path.join(ROOT, "tests", "data", "celeba")
TINY = ["--dataset", "celeba", "--data-dir", CELEBA, "--image-size", "32", "--filters", "8", "--latent-dim", "16",
        "--device", "cpu", "--log-every", "1", "--eval-images", "16", "--lr", "1e-3"]


def run(args, tmp_path, ranks=1, script="vae_began", zero_noise_draws=True):
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else []
    program = [HELPER, script] if zero_noise_draws else [os.path.join(ROOT, script + ".py")]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *launcher, *program, *args], cwd=str(tmp_path), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def weights(out):
    return common.load_checkpoint(os.path.join(out, "checkpoint.pt"), "vae_began")["models"]["model"]


def test_two_ranks_at_b_equal_one_process_at_2b_and_resume_on_one_rank(tmp_path):
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    run(TINY + ["--out", two, "--steps", "2", "--batch-size", "4"], tmp_path, ranks=2)
    run(TINY + ["--out", one, "--steps", "2", "--batch-size", "8"], tmp_path)
    a, b = weights(two), weights(one)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    # the 2-rank checkpoint resumes on one process, keeping the effective batch with --grad-accum
    output = run(TINY + ["--out", two, "--steps", "3", "--batch-size", "4", "--grad-accum", "2"], tmp_path)
    state = common.load_checkpoint(os.path.join(two, "checkpoint.pt"), "vae_began")
    assert "resuming" in output and state["step"] == 3 and state["world_size"] == 1
    assert [r["step"] for r in common.read_jsonl(os.path.join(two, "metrics.jsonl"))] == [1, 2, 3]
    assert any(not torch.equal(a[k], weights(two)[k]) for k in a)  # it trained on


DATA = os.path.join(ROOT, "tests", "data")
# vlae.py's two-rank run is test_vlae.py's torchrun test
SMOKE = {"cmma": ["--data-dir", CELEBA, "--width", "0.5", "--eval-images", "4", "--valid-images", "4", "--parzen-samples", "8",
                  "--is-samples", "4"],
         "disentangled_vae": ["--dataset", "mnist", "--data-dir", os.path.join(DATA, "mnist"), "--z-s-dim", "4",
                              "--z-u-dim", "6", "--eval-images", "50", "--bn-images", "64", "--diversity-classes", "2",
                              "--diversity-samples", "3"]}


@pytest.mark.parametrize("script", list(SMOKE))
def test_cmma_and_lr_livae_train_on_two_ranks_with_replicas_that_agree(script, tmp_path):
    """DDP (cmma) or hand-averaged gradients (disentangled_vae) keep the two copies equal:
    the checkpoint's replica check would fail the run otherwise; rank 0 alone logs."""
    out = str(tmp_path / script)
    run(SMOKE[script] + ["--out", out, "--steps", "2", "--batch-size", "8", "--log-every", "1", "--device", "cpu"],
        tmp_path, ranks=2, script=script, zero_noise_draws=False)
    state = common.load_checkpoint(os.path.join(out, "checkpoint.pt"), script)
    assert state["step"] == 2 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert [r["step"] for r in common.read_jsonl(os.path.join(out, "metrics.jsonl"))] == [1, 2]


NODE = """
import os, sys, types, torch.distributed as dist, common, data
dist.init_process_group("gloo")
images = data.load_celeba(sys.argv[1], "train", 16, None, None, verbose=False).images
assert images.shape == (160, 16, 16, 3)
if dist.get_rank() == 0:
    os.makedirs("run")
    common.save_checkpoint("run/checkpoint.pt", "vlae", step=7, config={})
try:
    common.checkpoint_to_resume(types.SimpleNamespace(out="run", fresh=False), set(), "vlae", set(), None)
except ValueError as e:
    print("error:", e)
dist.destroy_process_group()
"""


def test_two_nodes_with_their_own_folders_build_their_caches_and_refuse_to_resume(tmp_path):
    """A multi-node run whose folders are local to each machine: two one-process 'nodes' on this
    host, each with its own FACE_VAE_CACHE and working folder, meet by static rendezvous. Each
    builds its cache; a checkpoint in rank 0's run folder that rank 1 cannot see is an error."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = []
    for node in range(2):
        home = tmp_path / f"node{node}"
        home.mkdir()
        env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "FACE_VAE_CACHE": str(home / "cache")}
        nodes.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
             str(node), "--master_addr", "127.0.0.1", "--master_port", str(port), "--no-python",
             sys.executable, "-c", NODE, CELEBA], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=str(home), start_new_session=True))
    try:  # a node that fails leaves the other waiting at a barrier: stop both
        outputs = [proc.communicate(timeout=90)[0] for proc in nodes]
    finally:
        for proc in nodes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert [proc.returncode for proc in nodes] == [0, 0], outputs
    for node, output in enumerate(outputs):
        assert [f for f in os.listdir(tmp_path / f"node{node}" / "cache") if f.endswith(".npy")]
        assert "rank 1 sees no checkpoint in run and rank 0 sees a checkpoint at step 7" in output, output


def test_replicas_that_differ_stop_the_checkpoint():
    same = {"model": (4668.578, 11480.56)}
    common.check_replicas_agree([same, dict(same)])
    with pytest.raises(RuntimeError, match="rank 1's copy of 'model' differs"):
        common.check_replicas_agree([same, {"model": (4770.834, 11480.56)}])


def test_k_micro_batches_of_b_equal_one_batch_of_kb(monkeypatch):
    monkeypatch.setattr(torch, "randn", torch.randn)
    monkeypatch.setattr(torch, "randn_like", torch.randn_like)
    zero_noise()
    cfg = vae_began.resolve_defaults(vae_begin_config())
    torch.manual_seed(0)
    model = vae_began.VAEBEGAN(cfg)
    twin = copy.deepcopy(model)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    results = []
    for m, xs in ((model, [x[:4], x[4:]]), (twin, [x])):
        opts = vae_began.make_optimizers(m, cfg, torch.device("cpu"))
        controller = vae_began.Controller.start((1e-3, 0.0, 0.0), "cpu")
        results.append(vae_began.train_step(m, opts, controller, xs, cfg, torch.device("cpu")))
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert abs(results[0]["L_d"].item() - results[1]["L_d"].item()) < 1e-6
    assert results[0]["k_t"].item() == results[1]["k_t"].item() > 0


def vae_begin_config():
    return vae_began.Config(image_size=32, filters=8, latent_dim=16, lr=1e-3)


def test_grad_accum_is_checked():
    try:
        vae_began.resolve_defaults(vae_began.Config(grad_accum=0))
    except ValueError as e:
        assert "--grad-accum" in str(e)
    else:
        raise AssertionError("no error for --grad-accum 0")
