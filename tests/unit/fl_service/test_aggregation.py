"""FedAvg kernel: equals the float64 sample-weighted mean; rejects malformed updates."""

import numpy as np
import pytest

from fl_service.aggregation import FedAvgAccumulator, fedavg, validate_update

SHAPES = [(70000,), (16, 3, 3, 3), (16,), (10, 300)]  # one tensor spans several chunks


def make_updates(count, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (
            [rng.standard_normal(s).astype(np.float32) for s in SHAPES],
            int(rng.integers(1, 5000)),
        )
        for _ in range(count)
    ]


def reference_mean(updates):
    total = sum(n for _, n in updates)
    return [
        sum(arrays[t].astype(np.float64) * n for arrays, n in updates) / total
        for t in range(len(SHAPES))
    ]


def assert_close(result, expected):
    assert [r.shape for r in result] == [e.shape for e in expected]
    for r, e in zip(result, expected, strict=True):
        assert r.dtype == np.float32
        np.testing.assert_allclose(r, e, rtol=1e-5, atol=1e-6)


def test_fedavg_matches_float64_weighted_mean():
    updates = make_updates(7)
    assert_close(fedavg(updates), reference_mean(updates))


def test_fedavg_weights_by_examples_not_by_update():
    ones = [np.ones(3, dtype=np.float32)]
    zeros = [np.zeros(3, dtype=np.float32)]
    (avg,) = fedavg([(ones, 3), (zeros, 1)])
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
    counts = [np.array(10, dtype=np.int64)], [np.array(20, dtype=np.int64)]
    (avg,) = fedavg([(counts[0], 1), (counts[1], 1)])
    assert avg.dtype == np.int64 and int(avg) == 15


def test_empty_input_is_an_error():
    with pytest.raises(ValueError):
        fedavg([])
    with pytest.raises(ValueError):
        FedAvgAccumulator().result()


def test_valid_update_passes():
    (arrays, _), (other, _) = make_updates(2)
    assert validate_update(arrays, other, 10) is None


@pytest.mark.parametrize(
    ("mutate", "num_examples", "reason"),
    [
        (lambda u: u[:-1], 10, "expected 4 tensors, got 3"),
        (lambda u: [u[0], u[1].reshape(16, 27), *u[2:]], 10, "tensor 1: shape"),
        (lambda u: [u[0].astype(np.float64), *u[1:]], 10, "tensor 0: dtype float64"),
        (lambda u: [u[0], u[1], np.full(16, np.nan, np.float32), u[3]], 10, "NaN or Inf"),
        (lambda u: [u[0], u[1], u[2], np.full((10, 300), np.inf, np.float32)], 10, "NaN"),
        (lambda u: u, 0, "positive integer"),
        (lambda u: u, -3, "positive integer"),
        (lambda u: u, 2.5, "positive integer"),
        (lambda u: u, True, "positive integer"),
        (lambda u: u, "12", "positive integer"),
    ],
)
def test_malformed_updates_are_rejected_with_a_reason(mutate, num_examples, reason):
    (reference, _), (update, _) = make_updates(2)
    assert reason in validate_update(reference, mutate(update), num_examples)


def test_read_only_arrays_as_deserialised_from_the_wire_are_accepted():
    updates = make_updates(3, seed=3)
    frozen = []
    for arrays, n in updates:
        views = [np.frombuffer(a.tobytes(), dtype=a.dtype).reshape(a.shape) for a in arrays]
        assert not views[0].flags.writeable
        frozen.append((views, n))
    assert_close(fedavg(frozen), reference_mean(updates))


def test_float64_models_are_averaged_in_float64():
    a, b = [np.array([1.0, 1e-12])], [np.array([3.0, 3e-12])]
    (avg,) = fedavg([(a, 1), (b, 1)])
    assert avg.dtype == np.float64
    np.testing.assert_allclose(avg, [2.0, 2e-12], rtol=1e-12)
