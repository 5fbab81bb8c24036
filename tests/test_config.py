import pytest

import odeplm
from odeplm import ConfigError, ModelConfig, Segment


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("width", -4),
        ("width", 30.0),
        ("heads", 3),  # 128 is not divisible by 3
        ("mlp_width", True),
        ("max_length", 0),
        ("embedding_size", 0),
        ("type_vocab_size", -1),
        ("inner_layers", 0),
        ("project_embeddings", "yes"),
        ("norm", "sandwich"),
        ("activation", "swish"),
        ("objective", "seq2seq"),
        ("dropout", 1.0),
        ("attention_dropout", -0.1),
        ("layer_norm_eps", 0.0),
        ("initializer_range", -1.0),
        ("dtype", "float16"),
        ("param_dtype", "bfloat16"),
        ("depth", ""),
        ("depth", "3x"),
        ("depth", "0"),
        ("depth", "0x4,2"),
        ("depth", "4@-1"),
        ("depth", ()),
        ("depth", (4,)),
        ("solve_checkpoints", 0),
        ("loss_chunk", 0),
        ("loss_chunk", 16.0),
        ("masked_positions", -1),
        ("masked_positions", 20),  # the default objective is causal: there are no masked positions
        ("logits_dtype", "float16"),
        ("remat", "some"),
        ("residual_gate", "skip"),
        ("time_features", 3),
        ("stride_features", 5),
        ("stride_features", -2),
    ],
)
def test_each_invalid_field_is_named(field, value):
    with pytest.raises(ConfigError) as error:
        ModelConfig(**{field: value})
    assert error.value.field == field
    assert str(error.value).startswith(field)


def test_unknown_field_is_named():
    with pytest.raises(ConfigError, match="widht"):
        ModelConfig.from_dict({"widht": 64})


def test_depth_plans():
    assert odeplm.parse_depth("12") == odeplm.fully_shared(12) == (Segment(12, 12.0),)
    assert odeplm.parse_depth("4x3") == odeplm.partially_shared(12, 4)
    assert odeplm.parse_depth("1,10,1") == odeplm.sandwich(1, 10, 1)
    assert odeplm.parse_depth("12x1") == odeplm.unshared(12)
    (segment,) = odeplm.parse_depth("24@12")
    assert (segment.steps, segment.span, segment.tau) == (24, 12.0, 0.5)
    with pytest.raises(ConfigError, match="equal groups"):
        odeplm.partially_shared(12, 5)


def test_config_round_trips_through_dict():
    config = ModelConfig(depth="2x3,1@0.5", embedding_size=64, norm="post", objective="masked")
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.layers == 7
    assert hash(config) == hash(ModelConfig.from_dict(config.to_dict()))
