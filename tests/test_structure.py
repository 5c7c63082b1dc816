"""Each script reads as its paper's chapter: read from the source (its AST), not run. Which
plausible regressions fail here: the paper's model, losses or step reaching for the run framework
(checkpoints, logging, the CLI) in common; the training loop moved out of sight into a helper or
a loop object; a model class pushed below helpers; a script importing from benchmarks/."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("vlae.py", "vae_began.py", "cmma.py", "disentangled_vae.py")
# common's maths and layers, and the device / autocast / gradient-averaging kit a train step needs
PAPER_KIT = {"reparameterize", "kl_normal_std", "kl_normal", "active_units", "recompute_batchnorm", "Reshape",
             "autocast", "make_grad_scaler", "accumulate_grad", "average_gradients", "all_reduce_mean"}


def parse(name: str) -> tuple[ast.Module, list]:
    with open(os.path.join(ROOT, name)) as f:
        source = f.read()
    return ast.parse(source), source.splitlines()


def sections(tree: ast.Module, lines: list) -> dict:
    """Top-level definitions by the `# --- paper: ... ---` / `# --- plumbing ... ---` banner above them."""
    banners = [(i + 1, m.group(1)) for i, line in enumerate(lines) if (m := re.match(r"# --- (.+?) ---$", line))]
    out: dict = {}
    for node in tree.body:
        above = [title for line, title in banners if line < node.lineno]
        out.setdefault(above[-1] if above else "", []).append(node)
    return out


def common_uses(node: ast.AST) -> set:
    return {n.attr for n in ast.walk(node)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "common"}


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_paper_part_uses_only_commons_maths_and_layers(name):
    tree, lines = parse(name)
    found = sections(tree, lines)
    paper = [title for title in found if title.startswith("paper") and not re.search("figure|evaluation", title)]
    assert len(paper) >= 3, f"{name}: model, losses and step sections expected, found {list(found)}"
    for title in paper:
        for node in found[title]:
            extra = common_uses(node) - PAPER_KIT
            assert not extra, f"{name}: {getattr(node, 'name', '?')} in '{title}' uses common.{sorted(extra)}"


def is_module(node: ast.AST) -> bool:
    return isinstance(node, ast.ClassDef) and any(ast.unparse(b) in ("nn.Module", "torch.nn.Module")
                                                  for b in node.bases)


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_model_comes_right_after_config_and_the_loop_is_in_train(name):
    tree, _ = parse(name)
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    first_model = next(i for i, n in enumerate(defs) if is_module(n))
    assert [n.name for n in defs[:first_model]] == ["Config"], f"{name}: before the first model class"
    train = next(n for n in defs if n.name == "train")
    loops = [n for n in ast.walk(train) if isinstance(n, ast.For) and "step" in ast.unparse(n.target)]
    assert len(loops) == 1, f"{name}: train() holds one `for step` loop"
    inside = ast.unparse(loops[0])
    for cadence in ("cfg.log_every", ".log(", "cfg.ckpt_every", "save_training_state(", ".poll(", ".exit("):
        assert cadence in inside, f"{name}: {cadence} is not inline in the training loop"


@pytest.mark.parametrize("name", SCRIPTS + ("common.py", "data.py"))
def test_the_scripts_and_their_kit_never_import_benchmarks(name):
    tree, _ = parse(name)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"benchmarks", "fidelity", "probes", "claims", "bench"}, f"{name} imports {imported}"
    assert "torch_fidelity" not in imported  # the metrics extra is benchmarks/fidelity.py's alone
