"""The export CLI refuses bad option combinations with a message, before building anything."""

import pytest

from mobilemoe_export import cli


def test_dense_baseline_of_a_dense_preset_is_a_clear_error(tmp_path):
    out = tmp_path / "x.pte"
    with pytest.raises(SystemExit) as e:
        cli.main(["--preset", "mobilellm-pro", "--dense-baseline", "total", "--out", str(out), "--no-progress"])
    assert "needs an MoE preset" in str(e.value) and not out.exists()


def test_scale_dtype_names_reports_what_is_stored():
    import torch

    from mobilemoe_export import models, quantize_moe

    m = models.build_model(models.get_config("tiny"), seed=0)
    quantize_moe(m, 32, 4, dense_linears=True, scales_dtype="fp16")
    assert cli.scale_dtype_names(m) == "fp16"
    assert cli.scale_dtype_names(torch.nn.Linear(4, 4)) == "no"
