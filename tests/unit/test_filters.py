"""The shared median filter: batch (evaluate) and streaming (worker) agree."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from soundwatch.model.filters import StreamingMedian, causal_median, clip_score


@given(scores=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60), k=st.integers(1, 9))
def test_streaming_equals_batch(scores, k):
    stream = StreamingMedian(k)
    online = [stream.update(s) for s in scores]
    np.testing.assert_allclose(online, causal_median(np.array(scores), k))


def test_single_spike_is_removed_and_sustained_rise_kept():
    x = np.zeros(20)
    x[10] = 50.0
    assert causal_median(x, 5).max() == 0.0
    x[10:] = 5.0
    y = causal_median(x, 5)
    assert y[11] == 0.0 and (y[12:] == 5.0).all()


def test_warm_up_uses_what_was_seen_not_zero():
    np.testing.assert_allclose(causal_median(np.array([3.0, 5.0, 4.0]), 5), [3.0, 4.0, 4.0])


def test_clip_score_is_mean_of_filtered():
    assert clip_score(np.array([1.0, 1.0, 10.0, 1.0]), 3) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        clip_score(np.array([]), 3)
    with pytest.raises(ValueError):
        causal_median(np.ones(3), 0)
