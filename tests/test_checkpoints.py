"""Checkpoints as a user hands them to the checkpoint commands: a run folder in place of its
checkpoint.pt, several checkpoints at once, and damaged contents (each one line, no traceback)."""
import json
import os

import pytest
import torch

import cmma
import common
import disentangled_vae
import vae_began
import vlae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, "tests", "data", "mnist")
CELEBA = os.path.join(ROOT, "tests", "data", "celeba")
CMMA_EVAL = ["--eval-images", "4", "--valid-images", "4", "--parzen-samples", "8", "--is-samples", "4"]
# one or two steps of each script at tiny settings, with the smallest end-of-run eval
TRAIN = {"vlae": (vlae, ["--dataset", "mnist", "--data-dir", MNIST, "--batch-size", "8", "--eval-images", "20",
                         "--bn-images", "40"]),
         "cmma": (cmma, ["--dataset", "mnist", "--data-dir", MNIST, "--batch-size", "8"] + CMMA_EVAL),
         "disentangled_vae": (disentangled_vae, ["--dataset", "toy", "--toy-points", "100", "--batch-size", "16",
                                                 "--eval-images", "30"]),
         "vae_began": (vae_began, ["--data-dir", CELEBA, "--image-size", "32", "--filters", "8", "--latent-dim", "16",
                                   "--eval-images", "8"])}
LOADERS = {"vlae": lambda cfg, explicit: vlae.load_run(cfg, explicit, torch.device("cpu"))[0],
           "cmma": lambda cfg, explicit: cmma.load_models(cfg, explicit, torch.device("cpu"))[0][0],
           "disentangled_vae": lambda cfg, explicit: disentangled_vae.load_models(cfg, explicit, torch.device("cpu"))[0][0],
           "vae_began": lambda cfg, explicit: vae_began.load_run(cfg, explicit, torch.device("cpu"))[0]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    for name, (script, args) in TRAIN.items():
        script.main(args + ["--out", str(folder / name), "--steps", "2", "--log-every", "1"])
    return folder


def error_line(capsys, run) -> str:
    with pytest.raises(SystemExit) as stop:
        run()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    (line,) = [l for l in err.splitlines() if l.startswith("error:")]
    return line


@pytest.mark.parametrize("name", list(TRAIN))
def test_a_run_folder_as_checkpoint_makes_the_run_folder_the_output_place(runs, name):
    """Every checkpoint command (sample, figures, eval, finetune, edit) takes its output folder
    from the loader, so the loader's `out` is what each of them writes into."""
    script = TRAIN[name][0]
    folder = str(runs / name)
    cfg = LOADERS[name](script.Config(checkpoint=folder), {"checkpoint"})
    assert os.path.samefile(cfg.out, folder)
    cfg = LOADERS[name](script.Config(checkpoint=os.path.join(folder, "checkpoint.pt")), {"checkpoint"})
    assert os.path.samefile(cfg.out, folder)


def test_sample_from_a_run_folder_writes_inside_it(runs):
    before = set(os.listdir(runs))
    vlae.main(["sample", "--checkpoint", str(runs / "vlae")])
    assert os.path.exists(runs / "vlae" / "figures" / "samples.png") and set(os.listdir(runs)) == before


@pytest.mark.parametrize("name", list(TRAIN))
def test_damaged_checkpoint_contents_are_one_line_naming_the_file(runs, name, capsys, tmp_path):
    script = TRAIN[name][0]
    state = torch.load(runs / name / "checkpoint.pt", map_location="cpu", weights_only=False)
    first = next(k for k, v in state["models"]["model"].items() if v.is_floating_point())

    def damaged(change) -> str:
        bad = {**state, "models": {k: dict(v) for k, v in state["models"].items()}}
        change(bad)
        path = tmp_path / "checkpoint.pt"
        torch.save(bad, path)
        return error_line(capsys, lambda: script.main(["sample", "--checkpoint", str(path)]))

    line = damaged(lambda s: s.pop("models"))
    assert str(tmp_path / "checkpoint.pt") in line and "lacks its models entry" in line
    line = damaged(lambda s: s["models"]["model"].pop(first))
    assert "does not fit the 'model' network" in line and first in line
    line = damaged(lambda s: s["models"]["model"].__setitem__(first, torch.full_like(state["models"]["model"][first],
                                                                                    float("nan"))))
    assert "non-finite (NaN or inf) weights" in line and first in line
    line = damaged(lambda s: s["models"]["model"].__setitem__(first, torch.zeros(3, 1)))
    assert "does not fit" in line and "size mismatch" in line


def test_vlae_checkpoint_whose_saved_image_size_disagrees_with_its_weights_is_one_line(runs, capsys, tmp_path):
    state = torch.load(runs / "vlae" / "checkpoint.pt", map_location="cpu", weights_only=False)
    state["config"]["image_size"] = 64
    state["config"]["dataset"] = "celeba"
    torch.save(state, tmp_path / "checkpoint.pt")
    line = error_line(capsys, lambda: vlae.main(["sample", "--checkpoint", str(tmp_path / "checkpoint.pt")]))
    assert "does not fit the 'model' network" in line


def test_cmma_eval_of_several_checkpoints_gives_each_run_its_own_numbers(tmp_path, capsys):
    """a, b and b, a: each eval.json equals the run evaluated alone, written into its own
    folder; two runs of one model are two rows; an explicit --out receives the comparison."""
    args = ["--dataset", "mnist", "--data-dir", MNIST, "--batch-size", "8", "--steps", "1", "--log-every", "1"]
    cmma.main(args + ["--out", str(tmp_path / "a"), "--seed", "0"] + CMMA_EVAL)
    cmma.main(args + ["--out", str(tmp_path / "b"), "--seed", "5"] + CMMA_EVAL)
    alone = {k: json.load(open(tmp_path / k / "eval.json")) for k in "ab"}
    for order in ("ab", "ba"):
        capsys.readouterr()
        cmma.main(["eval", "--checkpoint", ",".join(str(tmp_path / k) for k in order), "--out", str(tmp_path / "cmp")])
        out = capsys.readouterr().out
        for k in "ab":
            again = json.load(open(tmp_path / k / "eval.json"))
            assert again["parzen_test_nats_per_face"] == pytest.approx(alone[k]["parzen_test_nats_per_face"], rel=1e-6)
            assert again["elbo_nats_per_face"] == pytest.approx(alone[k]["elbo_nats_per_face"], rel=1e-6)
            assert f"cmma ({k})" in out
        assert alone["a"]["parzen_test_nats_per_face"] != alone["b"]["parzen_test_nats_per_face"]
        table = json.load(open(tmp_path / "cmp" / "eval_comparison.json"))
        assert set(table) == {"cmma (a)", "cmma (b)"}


def test_disentangled_eval_of_several_checkpoints_gives_each_run_its_own_numbers(tmp_path):
    args = ["--dataset", "toy", "--toy-points", "100", "--batch-size", "16", "--eval-images", "30", "--steps", "1"]
    disentangled_vae.main(args + ["--out", str(tmp_path / "a"), "--seed", "0"])
    disentangled_vae.main(args + ["--out", str(tmp_path / "b"), "--seed", "5"])
    alone = {k: json.load(open(tmp_path / k / "eval.json")) for k in "ab"}
    for order in ("ab", "ba"):
        disentangled_vae.main(["eval", "--checkpoint", ",".join(str(tmp_path / k / "checkpoint.pt") for k in order)])
        for k in "ab":
            again = json.load(open(tmp_path / k / "eval.json"))
            assert again["recon_mse_per_element"] == pytest.approx(alone[k]["recon_mse_per_element"], rel=1e-5)
    assert alone["a"]["recon_mse_per_element"] != alone["b"]["recon_mse_per_element"]


def test_eval_names_the_flag_to_drop_and_a_saved_data_folder_that_is_gone(runs, capsys, tmp_path):
    state = torch.load(runs / "vlae" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert os.path.isabs(state["config"]["data_dir"])  # evaluating from another folder finds the data
    line = error_line(capsys, lambda: vlae.main(["eval", "--checkpoint", str(runs / "vlae"), "--image-size", "64"]))
    assert "--image-size is a training flag: `eval` takes the model's settings from its checkpoint" in line
    state["config"]["data_dir"] = "data/moved-away"
    torch.save(state, tmp_path / "checkpoint.pt")
    line = error_line(capsys, lambda: vlae.main(["sample", "--checkpoint", str(tmp_path / "checkpoint.pt")]))
    assert "was trained on data/moved-away, which is not there" in line and "pass --data-dir" in line
    vlae.main(["sample", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--data-dir", MNIST])
    assert os.path.exists(tmp_path / "figures" / "samples.png")


@pytest.mark.parametrize("name", ["vlae", "vae_began"])
def test_scripts_that_evaluate_one_checkpoint_say_so_for_a_list(runs, name, capsys):
    script = TRAIN[name][0]
    line = error_line(capsys, lambda: script.main(["eval", "--checkpoint", f"{runs / name},{runs / name}"]))
    assert f"{name}.py evaluates one checkpoint at a time" in line
