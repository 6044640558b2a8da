import json

import pytest

from hspace_core.cli import main
from tiny import tiny_unet


def test_demo_on_a_users_diffusers_folder(tmp_path):
    folder = tmp_path / "model"
    tiny_unet(channels=1, size=8).save_pretrained(folder / "unet")
    out = tmp_path / "report"
    assert main(["demo", "--model", str(folder), "--samples", "16", "--steps", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["numbers"]["pca_explained_variance_ratio_first_step"]) == 8
    for name in ("samples.png", "pca_spectrum.png", "pc0_sweep.png", "ink_sweep.png", "pc0.safetensors", "summary.md"):
        assert (out / name).is_file()
    assert "class_transfer_hit_rate" not in summary["numbers"]  # labelled experiments need the embedded model


def test_demo_reports_bad_input_as_a_clean_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--model", str(tmp_path), "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "no diffusers UNet" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_on_the_embedded_model(tmp_path):
    out = tmp_path / "report"
    assert main(["demo", "--samples", "64", "--steps", "8", "--real-digits", "100", "--out", str(out)]) == 0
    numbers = json.loads((out / "summary.json").read_text())["numbers"]
    assert {"class_transfer_hit_rate", "ddim_reconstruction_mae", "pc0_class_change_rate"} <= set(numbers)
    assert numbers["edit_friendly_relative_error"] < 1e-5
    assert (out / "class_transfer.png").is_file()
    keeping = numbers["slant_class_keeping"]  # scaled on other seeds to move slant as far as the plain edit
    assert set(keeping) == set(numbers["slant_disentangled"]) and keeping["effect_at_+1"] > 0
    assert (out / "slant_class_keeping_evaluation.png").is_file() and (out / "slant_raw_vs_disentangled.png").is_file()


def test_demo_on_the_embedded_dit(tmp_path):
    """The main job on the flow-matching DiT, small: every experiment but the disentanglement one (64 samples)."""
    out = tmp_path / "report"
    assert main(["demo", "--model", "dit", "--samples", "16", "--steps", "4", "--real-digits", "10",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["numbers"]["edit_friendly_relative_error"] < 1e-5
    assert {"class_transfer_hit_rate", "pc0_class_change_rate", "ink_change_disentangled_x2"} <= set(summary["numbers"])
    assert (out / "class_transfer.png").is_file() and (out / "pc0_sweep.png").is_file()


def test_an_interrupted_demo_ends_with_one_line(tmp_path, capsys, monkeypatch):
    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr("hspace_core.demo.run_demo", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "hspace: interrupted\n"
