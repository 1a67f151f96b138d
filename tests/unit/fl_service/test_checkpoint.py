import json
import stat
from pathlib import Path

import pytest
import torch

from fl_service.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    save_checkpoint,
    save_final_model,
    verify_model,
    write_json,
)


def state() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(4)}


def test_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path) is None


def test_checkpoint_round_trips_model_round_and_history(tmp_path: Path) -> None:
    history = [{"global_round": 1, "accuracy": 0.5, "loss": 1.0, "participants": ["a"]}]
    save_checkpoint(tmp_path, state(), 1, history)
    history2 = [*history, {"global_round": 2, "accuracy": 0.7, "loss": 0.6, "participants": []}]
    save_checkpoint(tmp_path, {k: v + 1 for k, v in state().items()}, 2, history2)
    loaded = load_checkpoint(tmp_path)
    assert loaded["round"] == 2 and loaded["history"] == history2
    assert torch.equal(loaded["model"]["w"], state()["w"] + 1)
    # Written through a temporary file that is renamed into place: nothing else is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_final_model_is_a_state_dict_at_an_absolute_path(tmp_path: Path) -> None:
    path = save_final_model(tmp_path, state())
    assert path.is_absolute() and path.name == "final_model.pt"
    loaded = torch.load(path, weights_only=True)
    assert set(loaded) == {"w", "n"} and torch.equal(loaded["w"], state()["w"])


def test_the_strategy_state_travels_as_bytes_with_the_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, state(), 3, [], strategy_state=b"\x80\x04opaque")
    assert load_checkpoint(tmp_path)["strategy_state"] == b"\x80\x04opaque"
    # A checkpoint written before strategies were kept reads as one without a state.
    torch.save({"model": state(), "round": 1, "history": []}, tmp_path / "checkpoint.pt")
    assert load_checkpoint(tmp_path)["strategy_state"] is None


# ---------------------------------------------------------------- verified on load
def write_raw(tmp_path: Path, checkpoint: object) -> Path:
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(("checkpoint", "problem"), [
    ({"model": {"w": torch.tensor([1.0, float("nan")])}, "round": 1, "history": []},
     "model tensor w holds NaN or Inf"),
    ({"model": {"w": torch.tensor([float("inf")])}, "round": 1, "history": []}, "NaN or Inf"),
    ({"model": {}, "round": 1, "history": []}, "not a state_dict"),
    ({"model": {"w": [1.0]}, "round": 1, "history": []}, "not a state_dict"),
    ({"model": state(), "round": -1, "history": []}, "round must be an integer >= 0"),
    ({"model": state(), "round": "2", "history": []}, "round must be"),
    ({"model": state(), "round": 2, "history": [{"global_round": 1}]},
     "the history ends at round 1, the checkpoint says 2"),
    ({"model": state(), "round": 0, "history": "none"}, "history is not a list"),
    ({"model": state(), "round": 0, "history": [], "strategy_state": "x"}, "not bytes"),
    ([1, 2], "holds a list, not a checkpoint"),
])
def test_a_bad_checkpoint_is_one_line_naming_the_file(tmp_path: Path, checkpoint, problem) -> None:
    path = write_raw(tmp_path, checkpoint)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(tmp_path)
    message = str(raised.value)
    assert message.startswith(f"checkpoint: {path}: ") and problem in message
    assert "\n" not in message


def test_a_damaged_checkpoint_file_is_named_not_a_traceback(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, state(), 1, [{"global_round": 1}])
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{path}: unreadable"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    model = state()
    verify_model(tmp_path, state(), model)  # the same model passes
    with pytest.raises(CheckpointError, match=r"tensor w is torch.float32 \(3, 2\), the "
                                              r"model's is torch.float32 \(2, 3\)"):
        verify_model(tmp_path, {**model, "w": model["w"].reshape(3, 2)}, model)
    with pytest.raises(CheckpointError, match="tensor w is torch.float64"):
        verify_model(tmp_path, {**model, "w": model["w"].double()}, model)
    with pytest.raises(CheckpointError, match=r"missing \['n'\], extra \['m'\]"):
        verify_model(tmp_path, {"w": model["w"], "m": model["n"]}, model)


def test_files_are_private_and_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, state(), 0, [])
    write_json(tmp_path / "global_rounds.json", {"global_rounds": 3})
    for name in ("checkpoint.pt", "global_rounds.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert json.loads((tmp_path / "global_rounds.json").read_text()) == {"global_rounds": 3}

    def fail(out) -> None:
        out.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(tmp_path / "global_rounds.json", fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "global_rounds.json"]
    assert json.loads((tmp_path / "global_rounds.json").read_text()) == {"global_rounds": 3}
