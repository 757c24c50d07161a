"""Pass@k: the unbiased estimator of Chen et al. (2021), per problem and averaged over a benchmark."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k of one problem with ``c`` correct among ``n`` samples: ``1 - C(n-c, k) / C(n, k)``.

    Computed in product form, ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``: every factor lies in [0, 1], so there are no
    huge binomials and no overflow for any n. ``k > n`` cannot be estimated and raises ``ValueError``.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"pass_at_k: {name} must be an int, got {value!r} ({type(value).__name__})")
    if n < 1:
        raise ValueError(f"pass_at_k: n={n}; need at least one sample per problem")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c={c} correct samples out of n={n}; c must lie in [0, n]")
    if k < 1:
        raise ValueError(f"pass_at_k: k={k}; k must be >= 1")
    if k > n:
        raise ValueError(
            f"pass_at_k: k={k} > n={n}: Pass@{k} cannot be estimated from {n} samples; "
            f"generate at least {k} samples per problem or ask for k <= {n}"
        )
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def k_values(n: int) -> list[int]:
    """The k reported for n samples: 1, 2, 4, ... up to n, plus n itself when n is not a power of two."""
    if n < 1:
        raise ValueError(f"k_values: n={n}; need at least one sample per problem")
    ks = [1]
    while ks[-1] * 2 <= n:
        ks.append(ks[-1] * 2)
    if ks[-1] != n:
        ks.append(n)
    return ks


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Iterable[int]) -> dict[int, float]:
    """Pass@k averaged over problems, for each k; ``counts`` holds one ``(n, c)`` per problem.

    Pass@1 equals the mean accuracy over the n samples (c/n per problem), the paper's Pass@1.
    """
    if not counts:
        raise ValueError("mean_pass_at_k: no problems to average over")
    return {k: sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in ks}
