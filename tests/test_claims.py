"""benchmarks/claims.py at a tiny scale: the report's shape, not its verdicts (the small-scale
run is a benchmark: python benchmarks/claims.py vlae)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import claims  # noqa: E402


def test_vlae_claims_write_a_table_of_rows_and_the_figures_it_cites(tmp_path):
    out, work = tmp_path / "docs", tmp_path / "runs"
    claims.main(["vlae", "--scale", "tiny", "--data-dir", os.path.join(ROOT, "tests", "data"),
                 "--out", str(out), "--work", str(work), "--no-readme"])
    text = (out / "vlae.md").read_text()
    lines = text.splitlines()
    header = lines.index("| claim | where in the paper | what we measured | holds? |")
    rows = [l for l in lines[header + 2:] if l.startswith("| ")]
    assert len(rows) == 8  # probe, Fig. 2 identity, Fig. 2 style, MMD vs KL, Fig. 3 colour, effect, identity, Fig. 4
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 4 and all(cells)
        assert cells[3].split(":")[0] in ("**yes**", "**no**", "**mixed**")
    for run in ("mnist-mmd", "mnist-kl", "faces-mmd"):
        assert f"Run `{run}`" in text and os.path.exists(work / run / "eval.json")
    cited = [l[l.index("](") + 2:-1] for l in lines if l.startswith("![")]
    assert len(cited) == 7 and all(os.path.exists(out / c) for c in cited)
    assert "Machine:" in text and "this invocation took" in text


def test_cmma_claims_write_four_rows_with_the_judge_and_the_compared_figures(tmp_path):
    out, work = tmp_path / "docs", tmp_path / "runs"
    claims.main(["cmma", "--scale", "tiny", "--data-dir", os.path.join(ROOT, "tests", "data"),
                 "--out", str(out), "--work", str(work), "--no-readme"])
    text = (out / "cmma.md").read_text()
    lines = text.splitlines()
    header = lines.index("| claim | where in the paper | what we measured | holds? |")
    rows = [l for l in lines[header + 2:] if l.startswith("| ")]
    assert [r.split(" | ")[0][2:9] for r in rows] == ["Table 2", "Table 3", "Fig. 4:", "Fig. 6:"]
    assert all(r.split(" | ")[3].split(":")[0] in ("**yes**", "**no**", "**mixed**") for r in rows)
    assert "Judge: a small CNN trained on the 200 held-out digits" in text
    assert "chosen from 2 by validation Parzen LL" in text  # the CGAN was tuned
    cited = [l[l.index("](") + 2:-1] for l in lines if l.startswith("![")]
    assert len(cited) == 2 and all(os.path.exists(out / c) for c in cited)
    assert len([f for f in os.listdir(work) if f.startswith("judge-")]) == 1  # cached for the other papers
