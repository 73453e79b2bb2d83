"""T5 1.0 / T5 1.1 / mT5 in Flax linen with T5X parameter names."""

from spot.models.config import T5Config, config_names, get_config, size_name
from spot.models.t5 import T5, init_params, logical_axes, param_shapes

__all__ = ["T5", "T5Config", "config_names", "get_config", "init_params", "logical_axes",
           "param_shapes", "size_name"]
