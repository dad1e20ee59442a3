"""ablation.py's table and plots, from hand-written result files of two seeds (no training)."""
import json

import pytest

from tools import ablation


def write_row(root, seed, row, m, epochs=3):
    d = root / "results" / f"ablation-10min-s{seed}" / ablation.slug(row)
    d.mkdir(parents=True)
    res = {"map": m, "map_50": 2 * m, "map_75": m / 2, "ap_per_class": {"body": m + 0.01, "head": m - 0.01},
           "epochs": epochs, "train_img_per_s": 9.0}
    (d / "test_results.json").write_text(json.dumps(res))
    (d / "metrics.csv").write_text("epoch,train_s,val_map\n"
                                   + "".join(f"{e},150.0,{m * e / epochs}\n" for e in range(1, epochs + 1)))


@pytest.fixture
def two_seeds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ablation.py reads results/ relative to the working directory
    write_row(tmp_path, 0, "baseline", 0.10)
    write_row(tmp_path, 1, "baseline", 0.20, epochs=4)
    write_row(tmp_path, 0, "+TAL", 0.30)  # only one seed finished
    return [tmp_path / "runs" / f"ablation-10min-s{s}" for s in (0, 1)]


def test_table_averages_each_row_over_its_finished_seeds(two_seeds):
    lines = ablation.table(two_seeds).splitlines()
    assert len(lines) == 2 + 2  # header, separator, two finished rows in ROWS order
    baseline, tal = lines[2].split(" | "), lines[3].split(" | ")
    assert baseline[0] == "| baseline" and baseline[2] == "0.100 / 0.200" and baseline[3] == "**0.150**"
    assert baseline[4] == "0.300" and baseline[5] == "0.075"          # mAP50, mAP75 means
    assert baseline[6] == "0.160" and baseline[7] == "0.140"          # per-class AP means
    assert baseline[8] == "3 / 4"                                      # epochs per seed
    assert tal[2] == "0.300" and tal[3] == "**0.300**"


def test_plots_are_written(two_seeds, tmp_path):
    ablation.plot(two_seeds, tmp_path / "bars.png", "t")
    ablation.plot_curves(two_seeds, ["baseline", "+TAL"], tmp_path / "curves.png", "t")
    assert (tmp_path / "bars.png").stat().st_size > 0 and (tmp_path / "curves.png").stat().st_size > 0


def test_unknown_row_name_is_a_clear_error(two_seeds, capsys):
    with pytest.raises(SystemExit):
        ablation.main(["--time", "10", "--table", "--curves", "c.png", "--curve-rows", "basline"])
    assert "no row named 'basline'" in capsys.readouterr().err


def test_rows_keep_the_settings_they_were_measured_with(tmp_path):
    """The committed table was measured with the depthwise head and 2 loader workers: every row's train.py
    command must still ask for them, whatever train.py's defaults are."""
    import argparse
    import train
    args = argparse.Namespace(time=10, seed=0, img_size=416)
    for name, flags in ablation.ROWS:
        cmd = ablation.train_command(name, flags, args, tmp_path)
        parsed = train.parse_args(cmd[2:])
        assert parsed.head_conv == "depthwise" and parsed.workers == 2
        assert parsed.time == 10 and parsed.name == ablation.slug(name)
