"""One config package: typed sections for every stage (:mod:`.sections`), the one ``--set`` /
dotted-key implementation (:mod:`.overrides`), loading with the PaddleRec mapping applied once
(:mod:`.loading`, :mod:`.paddlerec`), the ready configs shipped as package data (:mod:`.presets`)
and the ``features`` section as encoder options (:mod:`.features`).

Other packages import from here; modules inside the package import each other directly.
"""

from .features import column_overrides, encoder_options, fitted_features
from .loading import dump_config, load_config, load_run_config, load_yaml, read_config_file
from .overrides import (Overrides, apply_overrides, get_dotted, override_items, parse_override, parse_value,
                        set_dotted)
from .paddlerec import PADDLE_MODEL_NAMES, PADDLE_MODEL_PARAMS, is_paddlerec_config, paddlerec_to_native
from .presets import PRESET_DIR, base_config_for, preset_names, preset_path
from .sections import (Config, ConfigError, DataConfig, EvalConfig, ExportConfig, FeaturesConfig, ModelConfig,
                       ServeConfig, TrainConfig, convert_setting, from_dict, parse_epoch_range_text, to_dict)

__all__ = [
    "column_overrides", "encoder_options", "fitted_features",
    "dump_config", "load_config", "load_run_config", "load_yaml", "read_config_file",
    "Overrides", "apply_overrides", "get_dotted", "override_items", "parse_override", "parse_value", "set_dotted",
    "PADDLE_MODEL_NAMES", "PADDLE_MODEL_PARAMS", "is_paddlerec_config", "paddlerec_to_native",
    "PRESET_DIR", "base_config_for", "preset_names", "preset_path",
    "Config", "ConfigError", "DataConfig", "EvalConfig", "ExportConfig", "FeaturesConfig", "ModelConfig",
    "ServeConfig", "TrainConfig",
    "convert_setting", "from_dict", "parse_epoch_range_text", "to_dict",
]
