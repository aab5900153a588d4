"""The Table 2 script: a seconds-long run, its outputs, and data sets it must not download."""

import csv
import json

import pytest
import torch

import examples.common
import fixpoint as fp
from examples import jfb_table2, jfb_training
from examples.common import DatasetNotFound, load_dataset, make_estimator

SMALL = ["--epochs", "1", "--max-train", "128", "--max-test", "64", "--no-progress"]


def test_smoke_run_writes_the_table_and_counts_matvecs(tmp_path):
    result = jfb_table2.main(
        [*SMALL, "--methods", "jfb", "jacobian", "neumann-2", "--out", str(tmp_path)]
    )
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"jfb", "jacobian", "neumann-2"}
    assert rows["jfb"]["matvecs_per_epoch"] == 0
    assert rows["jacobian"]["matvecs_per_epoch"] > 0
    assert rows["neumann-2"]["matvecs_per_epoch"] == 2 * 128  # k vjps per sample
    for row in rows.values():
        assert row["time_per_epoch_s"] > 0 and 0 <= row["test_accuracy"] <= 100
        assert row["forward_iterations_per_batch"] >= 1
    with (tmp_path / "table2.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["method"] for r in table] == ["jfb", "jacobian", "neumann-2"]
    assert {
        "time_per_epoch_s",
        "matvecs_per_epoch",
        "test_accuracy",
        "forward_iterations_per_batch",
        "skipped_batches",
    } <= set(table[0])
    payload = json.loads((tmp_path / "table2.json").read_text())
    assert payload["config"]["dataset"] == "digits" and len(payload["runs"]) == 3
    for figure in ("figure5.png", "figure6.png"):
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_methods_are_interleaved_and_timed_after_the_warm_up(tmp_path, monkeypatch):
    """Epochs alternate between methods (the order rotating each round); every method's
    results are those it gets trained alone; ratios are taken within rounds."""
    order = []
    real_epoch = jfb_training.Trainer.epoch

    def recording(self, number):
        order.append((number, self.method))
        return real_epoch(self, number)

    monkeypatch.setattr(jfb_training.Trainer, "epoch", recording)
    args = [*SMALL[2:], "--epochs", "3", "--out", str(tmp_path)]
    together = jfb_table2.main([*args, "--methods", "jfb", "neumann-2"])
    assert order == [
        (1, "jfb"), (1, "neumann-2"),
        (2, "neumann-2"), (2, "jfb"),
        (3, "jfb"), (3, "neumann-2"),
    ]  # fmt: skip
    alone = jfb_table2.main([*args, "--methods", "neumann-2"])
    accuracy = [e.test_accuracy for e in together["runs"][1].epochs]
    assert accuracy == [e.test_accuracy for e in alone["runs"][0].epochs]
    runs = {r.method: r for r in together["runs"]}
    ratio = together["speedups"]["neumann-2"]
    per_round = [
        runs["neumann-2"].epochs[i].seconds / runs["jfb"].epochs[i].seconds for i in (1, 2)
    ]
    assert ratio["rounds"] == 2 and min(per_round) == ratio["min"]
    assert ratio["median"] == sum(per_round) / 2
    row = {r["method"]: r for r in together["rows"]}["jfb"]
    assert row["time_per_epoch_s"] == sum(e.seconds for e in runs["jfb"].epochs[1:]) / 2


def test_batches_with_unconverged_cg_are_skipped(tmp_path):
    result = jfb_table2.main(
        [
            *SMALL,
            "--methods",
            "jacobian",
            "--cg-max-iter",
            "1",
            "--cg-tol",
            "1e-12",
            "--out",
            str(tmp_path),
        ]
    )
    run = result["runs"][0]
    assert run.epochs[0].skipped == 2  # both batches of 64


def test_method_names_map_to_estimators():
    assert make_estimator("jfb") == fp.JFB()
    assert make_estimator("neumann-7") == fp.Neumann(k=7)
    assert make_estimator("jacobian", rtol=1e-3, max_iter=9, warn=False) == fp.CG(
        atol=0.0, rtol=1e-3, max_iter=9, w0="zero", warn=False
    )
    assert make_estimator("cg") == make_estimator("jacobian")
    assert make_estimator("implicit", atol=1e-9, rtol=0.0, max_iter=7) == fp.Implicit(
        fp.Anderson(m=5, atol=1e-9, rtol=0.0, max_iter=7)
    )
    assert make_estimator("phantom-3") == fp.Phantom(k=3, damping=0.5)
    assert make_estimator("exact") == fp.Exact()
    for bad in ("neuman-5", "neumann-", "neumann-x", "phantom", "bogus"):
        with pytest.raises(ValueError, match="unknown estimator"):
            make_estimator(bad)
    with pytest.raises(SystemExit):
        jfb_table2.parse_args(["--methods", "jfb", "bogus"])


@pytest.mark.parametrize("name", ["mnist", "svhn", "cifar10"])
def test_missing_download_only_data_set_fails_clearly(name, tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tests must never download")

    monkeypatch.setattr(examples.common, "_import_torchvision", no_download)
    with pytest.raises(DatasetNotFound) as info:
        load_dataset(name, data_dir=tmp_path)
    message = str(info.value)
    assert "--download" in message and str(tmp_path) in message and "--data-dir" in message


def test_present_files_without_torchvision_name_the_fix(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (raw / name).write_bytes(b"")
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torchvision":
            raise ImportError("no torchvision here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install torchvision"):
        load_dataset("mnist", data_dir=tmp_path)


def test_digits_split_is_seeded_and_standardised():
    a, b = load_dataset("digits", seed=1), load_dataset("digits", seed=1)
    assert torch.equal(a.test_y, b.test_y)
    assert len(a.train_y) + len(a.test_y) == 1797 and a.train_x.shape[1:] == (1, 8, 8)
    assert abs(a.train_x.mean().item()) < 1e-5 and abs(a.train_x.std().item() - 1) < 1e-2
