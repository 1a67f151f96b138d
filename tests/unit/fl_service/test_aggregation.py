"""FedAvg kernel: equals the float64 sample-weighted mean; rejects malformed updates; casts an
aggregate back to the model's dtypes."""

import numpy as np
import pytest

from fl_service.aggregation import FedAvgAccumulator, cast_like, fedavg, validate_update

SHAPES = [(70000,), (16, 3, 3, 3), (16,), (10, 300)]  # one tensor spans several chunks


NAMES = [f"layer{i}" for i in range(len(SHAPES))]


def make_updates(count, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (
            {n: rng.standard_normal(s).astype(np.float32) for n, s in zip(NAMES, SHAPES,
                                                                          strict=True)},
            int(rng.integers(1, 5000)),
        )
        for _ in range(count)
    ]


def reference_mean(updates):
    total = sum(n for _, n in updates)
    return {
        name: sum(arrays[name].astype(np.float64) * n for arrays, n in updates) / total
        for name in NAMES
    }


def assert_close(result, expected):
    assert list(result) == list(expected)
    assert [r.shape for r in result.values()] == [e.shape for e in expected.values()]
    for name, e in expected.items():
        assert result[name].dtype == np.float32
        np.testing.assert_allclose(result[name], e, rtol=1e-5, atol=1e-6)


def test_fedavg_matches_float64_weighted_mean():
    updates = make_updates(7)
    assert_close(fedavg(updates), reference_mean(updates))


def test_fedavg_weights_by_examples_not_by_update():
    ones = {"w": np.ones(3, dtype=np.float32)}
    zeros = {"w": np.zeros(3, dtype=np.float32)}
    avg = fedavg([(ones, 3), (zeros, 1)])["w"]
    np.testing.assert_allclose(avg, [0.75, 0.75, 0.75])


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_accumulator_equals_batch_fedavg(batch):
    updates = make_updates(7, seed=1)
    acc = FedAvgAccumulator(batch=batch)
    for arrays, n in updates:
        acc.add(arrays, n)
    assert_close(acc.result(), reference_mean(updates))
    assert acc.num_updates == 7
    assert acc.num_examples == sum(n for _, n in updates)


def test_accumulator_result_can_be_taken_again_after_more_updates():
    updates = make_updates(4, seed=2)
    acc = FedAvgAccumulator(batch=2)
    for arrays, n in updates[:3]:
        acc.add(arrays, n)
    assert_close(acc.result(), reference_mean(updates[:3]))
    acc.add(*updates[3])
    assert_close(acc.result(), reference_mean(updates))


def test_integer_tensors_are_averaged_and_keep_their_dtype():
    counts = {"n": np.array(10, dtype=np.int64)}, {"n": np.array(20, dtype=np.int64)}
    avg = fedavg([(counts[0], 1), (counts[1], 1)])["n"]
    assert isinstance(avg, np.ndarray) and avg.dtype == np.int64 and int(avg) == 15


def test_empty_input_is_an_error():
    with pytest.raises(ValueError):
        fedavg([])
    with pytest.raises(ValueError):
        FedAvgAccumulator().result()


def test_valid_update_passes():
    (arrays, _), (other, _) = make_updates(2)
    assert validate_update(arrays, other) is None


def replace(update, name, value):
    return {**update, name: value}


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda u: {k: v for k, v in u.items() if k != "layer3"}, "missing ['layer3']"),
        (lambda u: {**u, "extra": u["layer0"]}, "extra ['extra']"),
        (lambda u: {"renamed" if k == "layer0" else k: v for k, v in u.items()}, "differ"),
        (lambda u: replace(u, "layer1", u["layer1"].reshape(16, 27)), "tensor layer1: shape"),
        (lambda u: replace(u, "layer0", u["layer0"].astype(np.float64)),
         "tensor layer0: dtype float64"),
        (lambda u: replace(u, "layer2", np.full(16, np.nan, np.float32)), "NaN or Inf"),
        (lambda u: replace(u, "layer3", np.full((10, 300), np.inf, np.float32)), "NaN"),
        (lambda u: replace(u, "layer2", [0.0] * 16), "not an array"),
    ],
)
def test_malformed_updates_are_rejected_with_a_reason(mutate, reason):
    (reference, _), (update, _) = make_updates(2)
    assert reason in validate_update(reference, mutate(update))


def test_cast_like_restores_the_models_dtypes_rounding_integers():
    reference = {"w": np.zeros(2, np.float32), "n": np.array(0, np.int64)}
    cast = cast_like(reference, {"w": np.array([0.5, 1.5]), "n": np.array(6.6)})
    assert cast["w"].dtype == np.float32 and cast["n"].dtype == np.int64
    assert isinstance(cast["n"], np.ndarray) and int(cast["n"]) == 7


def test_read_only_arrays_as_deserialised_from_the_wire_are_accepted():
    updates = make_updates(3, seed=3)
    frozen = []
    for arrays, n in updates:
        views = {k: np.frombuffer(a.tobytes(), dtype=a.dtype).reshape(a.shape)
                 for k, a in arrays.items()}
        assert not views["layer0"].flags.writeable
        frozen.append((views, n))
    assert_close(fedavg(frozen), reference_mean(updates))


def test_float64_models_are_averaged_in_float64():
    a, b = {"w": np.array([1.0, 1e-12])}, {"w": np.array([3.0, 3e-12])}
    avg = fedavg([(a, 1), (b, 1)])["w"]
    assert avg.dtype == np.float64
    np.testing.assert_allclose(avg, [2.0, 2e-12], rtol=1e-12)
