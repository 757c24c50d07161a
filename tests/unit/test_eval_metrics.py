"""Pass@k estimator against the exact reference 1 - C(n-c,k)/C(n,k) (math.comb, exact fractions)."""

from fractions import Fraction
from math import comb

import pytest

from recipe.lte.evaluate import k_values, mean_pass_at_k, pass_at_k


def reference(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(comb(n - c, k), comb(n, k))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16, 17, 32, 64, 100])
def test_matches_exact_reference_for_every_c_and_k(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(reference(n, c, k)), rel=1e-12, abs=1e-14), (n, c, k)


def test_large_n_where_binomials_are_huge():
    # C(1024, 512) has ~300 digits: a float binomial form overflows; the product form must not.
    for n, c, k in [(1024, 1, 512), (1024, 3, 100), (2000, 17, 1000), (1024, 1000, 1)]:
        assert pass_at_k(n, c, k) == pytest.approx(float(reference(n, c, k)), rel=1e-10)


def test_edge_cases():
    assert pass_at_k(16, 0, 1) == 0.0 and pass_at_k(16, 0, 16) == 0.0  # c = 0: never solved
    assert pass_at_k(16, 16, 1) == 1.0 and pass_at_k(16, 16, 16) == 1.0  # c = n
    assert pass_at_k(16, 13, 4) == 1.0  # n - c = 3 < k = 4: every 4-subset holds a correct one
    assert pass_at_k(16, 4, 1) == pytest.approx(4 / 16)  # Pass@1 = c / n
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # hand: 1 - C(3,2)/C(4,2) = 1/2


def test_refuses_k_above_n_and_bad_input():
    with pytest.raises(ValueError, match=r"k=17 > n=16"):
        pass_at_k(16, 3, 17)
    for args in [(16, 17, 1), (16, -1, 1), (16, 3, 0), (0, 0, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*args)
    with pytest.raises(TypeError):
        pass_at_k(16, 3.0, 1)


def test_k_values_and_mean():
    assert k_values(16) == [1, 2, 4, 8, 16]
    assert k_values(12) == [1, 2, 4, 8, 12]
    assert k_values(1) == [1]
    # two problems, n = 4: c = 1 and c = 4; Pass@2 = (1/2 + 1) / 2 = 3/4, Pass@1 = (1/4 + 1) / 2 = 5/8
    assert mean_pass_at_k([(4, 1), (4, 4)], [1, 2]) == pytest.approx({1: 5 / 8, 2: 3 / 4})
