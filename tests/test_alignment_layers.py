import pytest

from cache2cache.alignment.layers import layer_map, parse_explicit, spread, terminal
from cache2cache.errors import C2CError


@pytest.mark.parametrize("n_r,n_s", [(30, 24), (24, 30), (4, 6), (6, 4), (5, 5), (1, 3), (3, 1), (28, 18)])
def test_rules_give_valid_sharer_layers(n_r, n_s):
    for m in (terminal(n_r, n_s), spread(n_r, n_s)):
        assert len(m) == n_r
        assert all(0 <= s < n_s for s in m)
        assert m == sorted(m)  # depth order is preserved
        assert m[-1] == n_s - 1  # the last layers are always paired


def test_terminal_pairs_from_the_top_and_clamps():
    assert terminal(6, 4) == [0, 0, 0, 1, 2, 3]
    assert terminal(4, 6) == [2, 3, 4, 5]
    assert terminal(30, 24)[6:] == list(range(24))
    assert terminal(30, 24)[:6] == [0] * 6


def test_spread_is_proportional():
    assert spread(5, 9) == [0, 2, 4, 6, 8]
    assert spread(3, 3) == [0, 1, 2]


def test_explicit_map_and_errors():
    assert parse_explicit("0:1, 3:2", 4, 3) == [1, None, None, 2]
    assert layer_map("1:0", 2, 2) == [None, 0]
    for bad in ("0-1", "5:0", "0:9", "x:y", ","):
        with pytest.raises(C2CError):
            parse_explicit(bad, 4, 3)
    with pytest.raises(C2CError, match="unknown layer alignment"):
        layer_map("diagonal", 4, 4)
