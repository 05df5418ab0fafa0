"""The training-speed benchmark's arithmetic and its one-line errors (no runs here)."""

import pytest

from interop.errors import UserError
from interop.tiny_configs import tiny_config
from jax_sft.bench import train_speed
from jax_sft.models.flops import train_flops_per_token


def test_a_case_is_model_and_sequence_length():
    assert train_speed.parse_case("llama-50m:512") == ("llama-50m", 512)
    with pytest.raises(UserError, match="expected MODEL:SEQ"):
        train_speed.parse_case("llama-50m")
    with pytest.raises(UserError, match="unknown tiny model 'llama-9m'"):
        train_speed.parse_case("llama-9m:256")


def test_the_row_takes_medians_and_divides_by_the_measured_peak():
    def run(tokens_per_s, rss):
        return {
            "tokens_per_s": tokens_per_s,
            "step_s": 1.0,
            "first_step_s": 2.0,
            "peak_rss_mb": rss,
        }

    runs = {"jax": [run(300, 10), run(330, 30), run(310, 20)], "torch": [run(280, 5), run(290, 6)]}
    row = train_speed._row(("llama-10m", 256), runs, peak=1e11)
    assert row["jax_tokens_per_s"] == 310 and row["torch_tokens_per_s"] == 285
    assert row["jax_peak_rss_mb"] == 20
    assert row["jax_over_torch_tokens_per_s"] == pytest.approx(310 / 285)
    per_scored_token = train_flops_per_token(tiny_config("llama-10m"), 256) * 256 / 255
    assert row["jax_mfu"] == pytest.approx(310 * per_scored_token / 1e11)
    assert "| llama-10m | 256 | 310 / 285 | 1.09x |" in train_speed.table({"rows": [row]})
