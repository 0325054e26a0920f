"""Golden configs: an experiment that changes without `make golden` fails here with a diff."""

from __future__ import annotations

import pytest

from xlafw.config import golden


@pytest.mark.parametrize("name", golden.experiment_names())
def test_experiment_matches_its_golden_config(name):
    diff = golden.stale_diff(name)
    if diff:
        pytest.fail(
            f"experiment {name} changed without regenerating its golden config.\n{diff}\n"
            f"If the change is intended, run: {golden.REGENERATE}",
            pytrace=False,
        )


def test_golden_directory_holds_exactly_the_registered_experiments():
    files = {p.stem for p in golden.GOLDEN_DIR.glob("*.txt")}
    assert files == set(golden.experiment_names()), f"run: {golden.REGENERATE}"


def test_a_changed_experiment_is_reported_as_a_unified_diff(tmp_path):
    golden.write_all(tmp_path)
    path = golden.golden_path("llama_tiny", tmp_path)
    path.write_text(path.read_text().replace("hidden_size: int = 256", "hidden_size: int = 512"))
    diff = golden.stale_diff("llama_tiny", tmp_path)
    assert "-model.config.hidden_size: int = 512" in diff
    assert "+model.config.hidden_size: int = 256" in diff
    assert golden.stale_diff("llama_tiny_smoke", tmp_path) is None
