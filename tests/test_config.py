"""The Config refuses what the hardware cannot build, naming the value and the limit."""

import pytest

from dpfm.config import Config, ConfigError
from dpfm.reference import FixedFormat, Formats


def test_default_config_is_the_seed_net():
    c = Config()
    assert c.net == (4, 5, 5, 1) and c.k == 16 and c.batch == 10 and c.n_params == 61
    assert c.idx_bits == 6 and c.lanes == 4 and c.policy == "stream"


@pytest.mark.parametrize("changes, words", [
    (dict(k=0), ["k=0", "minimum of 1"]),
    (dict(k=-3), ["k=-3", "minimum of 1"]),
    (dict(k=62), ["k=62", "61 parameters"]),
    (dict(idx_bits=5), ["idx_bits=5", "61 parameters", "at least 6 bits"]),
    (dict(lanes=18), ["lanes=18", "1..k+1=17"]),
    (dict(batch=0), ["batch=0", "minimum of 1"]),
    (dict(activations=("sigmoid", "swish", "linear")), ["'swish'", "known"]),
    (dict(activations=("sigmoid",)), ["3 layers", "1 activations"]),
    (dict(formats=Formats(value=FixedFormat(26, 16))), ["26 bits", "25 x 18"]),
    (dict(formats=Formats(weight=FixedFormat(19, 12))), ["19 x 24", "25 x 18"]),
    (dict(policy="greedy"), ["'greedy'", "known"]),
])
def test_bad_config_is_refused_naming_value_and_limit(changes, words):
    with pytest.raises(ConfigError) as e:
        Config(**changes)
    for w in words:
        assert w in str(e.value)


def test_wide_formats_are_allowed_without_dsps():
    c = Config(formats=Formats(value=FixedFormat(26, 16)), use_dsp=False)
    assert c.formats.value.bits == 26


def test_hash_is_stable_and_sensitive():
    assert Config().hash == Config().hash
    assert Config(k=8).hash != Config().hash
    assert Config.from_dict(Config(k=8, batch=4).to_dict()) == Config(k=8, batch=4)
