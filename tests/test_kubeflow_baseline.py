"""LatestPushedModel's executor: the production model when there is one, else the candidate."""

from __future__ import annotations

from pathlib import Path

from hoh.components.latest_pushed_model.component import FOUND_PROPERTY, SOURCE_PROPERTY


def _run(candidate_uri: Path, repo: Path, out: Path):
    from tfx.types import standard_artifacts

    from hoh.components.latest_pushed_model import component

    candidate, baseline = standard_artifacts.Model(), standard_artifacts.Model()
    candidate.uri, baseline.uri = str(candidate_uri), str(out)
    component.LatestPushedModel_Executor().Do(
        {"candidate": [candidate]},
        {"model": [baseline]},
        {"model_repository": str(repo), "model_name": "hoh"},
    )
    return baseline


def _saved_model(directory: Path, content: bytes) -> Path:
    directory.mkdir(parents=True)
    (directory / "saved_model.pb").write_bytes(content)
    (directory / "variables").mkdir()
    return directory


def test_candidate_stands_in_before_the_first_push_then_production_is_used(tmp_path):
    candidate = tmp_path / "Trainer" / "model" / "7"
    _saved_model(candidate / "Format-Serving", b"candidate")
    repo = tmp_path / "repo"

    first = _run(candidate, repo, tmp_path / "b1")
    assert (Path(first.uri) / "Format-Serving" / "saved_model.pb").read_bytes() == b"candidate"
    assert first.get_int_custom_property(FOUND_PROPERTY) == 0
    assert first.get_string_custom_property(SOURCE_PROPERTY) == str(candidate / "Format-Serving")

    production = _saved_model(repo / "hoh" / "4" / "model.savedmodel", b"production")
    second = _run(candidate, repo, tmp_path / "b2")
    assert (Path(second.uri) / "Format-Serving" / "saved_model.pb").read_bytes() == b"production"
    assert (Path(second.uri) / "Format-Serving" / "variables").is_dir()
    assert second.get_int_custom_property(FOUND_PROPERTY) == 1
    assert second.get_string_custom_property(SOURCE_PROPERTY) == str(production)
