"""Time per epoch of the Jacobian-based backward against JFB on the Table 2 example (digits).

Runs ``examples/jfb_table2.py`` (same network, seed and data order for both methods) and reports
the ratio next to the JFB paper's (Table 2: 1.6× MNIST, 2.5× SVHN, 3.6× CIFAR-10).

    python -m benchmarks.training [--quick]
"""

from __future__ import annotations

import tempfile

from benchmarks.common import Ratio, section_main


def run(quick: bool = False) -> tuple[list[Ratio], str]:
    # Imported here: the examples need the examples extra (scikit-learn, matplotlib, tqdm).
    from examples import jfb_table2
    from examples.jfb_report import PAPER_SPEEDUP, format_table

    epochs = "3" if quick else "10"
    with tempfile.TemporaryDirectory() as out:
        result = jfb_table2.main(
            ["--methods", "jfb", "jacobian", "--epochs", epochs, "--no-progress", "--out", out]
        )
    rows = {r["method"]: r for r in result["rows"]}
    jfb, jac = rows["jfb"], rows["jacobian"]
    ratio = result["speedups"]["jacobian"]
    paper = ", ".join(f"{k} {v}×" for k, v in PAPER_SPEEDUP.items())
    text = format_table(result["rows"]) + f"\npaper (Jacobian-based / JFB): {paper}"
    return [
        Ratio(
            "training",
            "Jacobian-based / JFB time per epoch (digits, interleaved epochs)",
            ratio["median"],
            None,
            detail=f"{jac['time_per_epoch_s']:.2f} vs {jfb['time_per_epoch_s']:.2f} s; range "
            f"{ratio['min']:.2f}–{ratio['max']:.2f} over {ratio['rounds']} rounds; paper {paper}",
        )
    ], text


def main() -> None:
    section_main(run, __doc__)


if __name__ == "__main__":
    main()
