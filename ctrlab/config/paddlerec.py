"""PaddleRec-style configs mapped to native ones (applied once, by :mod:`ctrlab.config.loading`).

PaddleRec users keep their ``config.yaml`` (``runner:`` and ``hyper_parameters:`` sections):
:func:`paddlerec_to_native` maps every key ctrlab understands and returns a note for each key
that does not apply, so nothing is silently ignored.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .sections import ConfigError, DataConfig, EvalConfig, TrainConfig, convert_setting

NATIVE_SECTIONS = ("data", "features", "model", "train", "eval", "run_dir")

# PaddleRec model folder names -> ctrlab model names
PADDLE_MODEL_NAMES = {
    "gatednn": "gatenet", "gate_dnn": "gatenet", "dcn_v2": "dcn_v2", "dcnv2": "dcn_v2", "wide_deep": "wide_deep",
    "widedeep": "wide_deep", "logistic_regression": "lr", "autoint": "autoint", "fibinet": "fibinet", "dmr": "dmr",
    "share_bottom": "shared_bottom", "escm2": "esmm",  # (escm2: ctrlab has no ESCM2; see _multitask_notes)
}

# hyper_parameters key -> model parameter (per PaddleRec model extras)
PADDLE_MODEL_PARAMS = {
    "sparse_feature_dim": "embedding_dim",
    "fc_sizes": "hidden_units",
    "layer_sizes": "hidden_units",
    "layer_sizes_dnn": "hidden_units",
    "cross_num": "cross_layers",
    "layer_sizes_cin": "cin_layer_units",
    "bot_layer_sizes": "bottom_mlp_units",
    "top_layer_sizes": "top_mlp_units",
    "num_field": None,  # derived from the data
    "use_embedding_gate": "use_embedding_gate",
    "use_hidden_gate": "use_hidden_gate",
    "dropout_rate": "dropout",
    "dnn_use_bn": "batch_norm",
    "item_emb_size": "embedding_dim",  # din, dien: ctrlab embeds every field with one size
    "item_count": None,
    "cat_count": None,
    "user_count": None,
    "position_count": None,
    "n_head": "attention_heads",  # bst
    "main_embedding_size": "embedding_dim",  # dmr: ctrlab embeds every field with one size
}

# dmr's embedding-table sizes (PaddleRec's fixed tables over the full Alimama data): ctrlab
# derives each from the data (a vocabulary per field)
PADDLE_DMR_TABLE_SIZES = (
    "user_size", "cms_segid_size", "cms_group_id_size", "final_gender_code_size", "age_level_size",
    "pvalue_level_size", "shopping_level_size", "occupation_size", "new_user_class_level_size",
    "adgroup_id_size", "cate_size", "campaign_id_size", "customer_size", "brand_size", "btag_size", "pid_size",
)

# PaddleRec's sequence models read "hist items;hist cates;item;cate;label" lines (models/rank/din
# and dien, their dinReader / dienReader; histories space-separated, oldest first): the layout as
# a ctrlab generic schema, each history sharing its target's vocabulary and embedding table.
# PaddleRec pads a batch to its longest history; ctrlab keeps the most recent
# PADDLE_HISTORY_LENGTH items (and counts the rows it cuts).
PADDLE_HISTORY_LENGTH = 100
PADDLE_SEQUENCE_MODELS = ("din", "dien", "bst", "dmr")

# dmr (models/rank/dmr, alimama_reader + net.py): 267 comma-separated numbers a line, no header:
# five blocks of DMR_HISTORY_LENGTH columns (behaviour type, category and brand histories, oldest
# to newest and right-aligned, then the history mask and the match mask), the user and ad
# profile ids, price (the only dense value), pid and the click label.
DMR_HISTORY_LENGTH = 50
DMR_BLOCKS = ("btag_his", "cate_his", "brand_his", "mask", "match_mask")
DMR_COLUMNS = (
    *(f"{block}_{i}" for block in DMR_BLOCKS for i in range(DMR_HISTORY_LENGTH)),
    "user", "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level", "shopping_level",
    "occupation", "new_user_class_level", "adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price",
    "pid", "label",
)


def _dmr_data() -> dict[str, Any]:
    """dmr's layout: each history a list built from its block of columns. A padded step is 0 in
    every history and 0 in the history mask (and a real step is never 0: checked on PaddleRec's
    sample by tests/config/test_paddlerec_dmr.py), so ``padding: "0"`` drops exactly the masked
    steps and the mask columns are not read. The match mask is not read either."""
    def history(block: str, vocab_of: str | None) -> dict[str, Any]:
        return {"kind": "sequence", "max_length": DMR_HISTORY_LENGTH, "padding": "0", "vocab_of": vocab_of,
                "columns": [f"{block}_{i}" for i in range(DMR_HISTORY_LENGTH)]}

    sparse = [c for c in DMR_COLUMNS[len(DMR_BLOCKS) * DMR_HISTORY_LENGTH:] if c not in ("price", "label")]
    return {"format": "csv", "schema": {
        "columns": list(DMR_COLUMNS), "label": "label", "dense": ["price"], "sparse": sparse, "header": False,
        "delimiter": ",", "lists": {"btag_his": history("btag_his", None), "cate_his": history("cate_his", "cate_id"),
                                    "brand_his": history("brand_his", "brand")}}}


def _paddle_sequence_data(name: str) -> dict[str, Any]:
    """data.format and data.schema of PaddleRec's reader for sequence model ``name``."""
    history = {"kind": "sequence", "separator": " ", "max_length": PADDLE_HISTORY_LENGTH}
    if name == "dmr":
        return _dmr_data()
    if name == "bst":  # amazon_reader: userid:u history:i... cate:c... position:p... target:i target_cate:c ...
        return {"format": "kv", "schema": {
            "columns": ["userid", "history", "cate", "position", "target", "target_cate", "target_position", "label"],
            "label": "label", "dense": [], "sparse": ["userid", "target", "target_cate", "target_position"],
            "lists": {"history": {**history, "vocab_of": "target"}, "cate": {**history, "vocab_of": "target_cate"},
                      "position": {**history, "vocab_of": "target_position"}}}}
    return {"format": "csv", "schema": {
        "columns": ["hist_item_id", "hist_cate_id", "item_id", "cate_id", "label"], "label": "label",
        "dense": [], "sparse": ["item_id", "cate_id"], "header": False, "delimiter": ";",
        "lists": {"hist_item_id": {**history, "vocab_of": "item_id"}, "hist_cate_id": {**history, "vocab_of": "cate_id"}}}}

# PaddleRec's multi-task models (models/multitask) and their readers' layouts, as ctrlab schemas.
# census_reader (mmoe, ple, share_bottom): 501 comma-separated numbers a line, no header: the
# marital label (never married), the income label (>50K), then 499 features (one-hot indicators
# and raw continuous values) that PaddleRec feeds as one dense vector: 499 dense columns here.
# PaddleRec's tasks are income then marital (the reader yields them in that order; auc_income is
# its first metric): so are ctrlab's (task 0 income, task 1 marital).
PADDLE_MULTITASK_MODELS = ("mmoe", "ple", "shared_bottom", "esmm", "aitm")
CENSUS_FEATURES = tuple(f"feature_{i}" for i in range(499))
CENSUS_COLUMNS = ("marital", "income", *CENSUS_FEATURES)
# aitm_reader: CSV click,purchase then 18 Ali-CCP field columns (hyper_parameters.feature_vocabulary
# names them, in this order); train.csv has a header line, test.csv none
AITM_FIELDS = ("101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207", "216", "508",
               "509", "702", "853", "301")
# esmm_reader / escm_reader (Ali-CCP): sample_id,click,conversion then field:id tokens, all
# comma-separated; the reader's 23 fields, of which those that repeat in a line are list columns
ALICCP_FIELDS = ("101", "109_14", "110_14", "127_14", "150_14", "121", "122", "124", "125", "126", "127", "128",
                 "129", "205", "206", "207", "210", "216", "508", "509", "702", "853", "301")
ALICCP_MULTI = ("109_14", "110_14", "127_14", "150_14", "210", "853")
ALICCP_MAX_LEN = 3  # esmm_reader's hyper_parameters.max_len default: ids kept per field


def _census_data() -> dict[str, Any]:
    return {"format": "csv", "schema": {
        "columns": list(CENSUS_COLUMNS), "label": ["income", "marital"], "dense": list(CENSUS_FEATURES),
        "sparse": [], "header": False, "delimiter": ","}}


def _aitm_data(fields: list[str]) -> dict[str, Any]:
    return {"format": "csv", "schema": {
        "columns": ["click", "purchase", *fields], "label": ["click", "purchase"], "dense": [],
        "sparse": list(fields), "header": "auto", "delimiter": ","}}


def _aliccp_data(max_len: int) -> dict[str, Any]:
    lists = {f: {"kind": "multi", "max_length": max_len, "pooling": "sum"} for f in ALICCP_MULTI}
    return {"format": "kv", "schema": {
        "columns": ["sample_id", "click", "conversion", *ALICCP_FIELDS],
        "positional": ["sample_id", "click", "conversion"], "id_column": "sample_id",
        "label": ["click", "conversion"], "dense": [], "delimiter": ",",
        "sparse": [f for f in ALICCP_FIELDS if f not in ALICCP_MULTI], "lists": lists}}


# hyper_parameters key -> (model parameter, how the value maps) for the multi-task models
PADDLE_MULTITASK_PARAMS = {
    "expert_num": "num_experts",  # mmoe
    "exp_per_task": "num_experts",  # ple: task-specific experts per task
    "shared_num": "num_shared_experts",  # ple
    "level_number": "num_levels",  # ple
    "expert_size": "expert_units",  # one hidden layer per expert (PaddleRec: Linear + ReLU)
    "tower_size": "tower_units",  # one hidden layer per tower, then the logit
    "bottom_size": "hidden_units",  # share_bottom: one shared hidden layer
    "embedding_size": "embedding_dim",  # aitm
    "dims": "tower_units",  # aitm
    "ctr_fc_sizes": "tower_units",  # esmm: both towers take one list in ctrlab
}
PADDLE_LAYER_WIDTHS = ("expert_size", "tower_size", "bottom_size")  # one width -> a one-layer list

# PaddleRec's layer lists that end with the network's output layer: a final 2 is PaddleRec's
# 2-class softmax, a final 1 a sigmoid unit; ctrlab's equivalent of either is its 1-logit output
# layer, which the model adds itself (so the 2 is not kept as a hidden layer)
PADDLE_OUTPUT_LAYER_LISTS = ("top_layer_sizes",)

# hyper_parameters key -> (native section, key) for training settings
PADDLE_TRAIN_KEYS = {
    "reg": ("train", "reg"),  # L2 on the embedding rows a batch touches
    "clip_by_norm": ("train", "grad_clip"),  # global-norm clipping of the dense gradients
    "l2_reg_cross": ("train", "weight_decay"),  # L2 on the dense weights (cross weights included)
}

# runner key -> (native section, key)
PADDLE_RUNNER_KEYS = {
    "train_batch_size": ("train", "batch_size"),
    "epochs": ("train", "epochs"),
    "print_interval": ("train", "log_every"),
    "infer_batch_size": ("eval", "batch_size"),
    "seed": ("train", "seed"),
    "use_visual": ("train", "tensorboard"),
}

# What a PaddleRec config means where ctrlab has its own defaults: every listed epoch runs (no
# validation holdout, early stopping or learning-rate decay unless native sections ask for them),
# dense slot values are used as given, and every categorical id is kept (PaddleRec's table holds
# every hashed id). Native sections beside runner:/hyper_parameters: override these.
PADDLE_DEFAULTS = {
    "data": {"split": [1.0, 0.0, 0.0]},
    "train": {"early_stopping_patience": 0, "lr_decay_factor": 1.0},
    "features": {"numeric": {"transform": "passthrough"}, "categorical": {"encoder": "vocab", "min_count": 1}},
}


def is_paddlerec_config(data: dict[str, Any]) -> bool:
    return "runner" in data or "hyper_parameters" in data


def _resolve(path: str, base: Path) -> str:
    candidate = base / path
    return str(candidate) if not Path(path).is_absolute() and candidate.exists() else path


def _checked(section: str, key: str, value: Any, origin: str) -> Any:
    """A PaddleRec value converted and range-checked as native ``section.key``; errors name both keys."""
    cls = {"train": TrainConfig, "eval": EvalConfig, "data": DataConfig}[section]
    return convert_setting(cls, key, value, f"{origin} (ctrlab {section}.{key})")


def _merge_defaults(out: dict[str, Any], defaults: dict[str, Any]) -> None:
    for key, value in defaults.items():
        if isinstance(value, dict):
            node = out.setdefault(key, {})
            if isinstance(node, dict):
                _merge_defaults(node, value)
        else:
            out.setdefault(key, copy.deepcopy(value))


def _model_param(name: str, key: str, value: Any, params: dict[str, Any], notes: list[str],
                 hyper: dict[str, Any]) -> None:
    """Map one hyper_parameters key onto the model's parameters (checked by the registry)."""
    from ..models import check_params, list_models  # (torch: imported only when a PaddleRec config is mapped)

    target = PADDLE_MODEL_PARAMS[key]
    if target is None:
        notes.append(f"hyper_parameters.{key} is derived from the data by ctrlab")
        return
    if key == "fc_sizes" and "layer_sizes_dnn" in hyper:
        notes.append("hyper_parameters.fc_sizes is not used: PaddleRec's model reads layer_sizes_dnn")
        return
    if key in PADDLE_OUTPUT_LAYER_LISTS:
        if not isinstance(value, list) or not value or value[-1] not in (1, 2):
            raise ConfigError(f"hyper_parameters.{key}: expected a list of layer sizes ending in PaddleRec's output "
                              f"layer (2: two-class softmax, 1: sigmoid), got {value!r}")
        value = value[:-1]  # ctrlab's 1-logit output layer replaces it
    if name in list_models():
        try:
            value = check_params(name, {target: value})[target]
        except ValueError as exc:
            raise ConfigError(f"hyper_parameters.{key} (ctrlab model.params.{target}): {exc}") from None
        value = list(value) if isinstance(value, tuple) else value
    params[target] = value
    if key == "layer_sizes_cin":
        params.setdefault("cin_split_half", False)  # PaddleRec's CIN feeds every layer's maps forward


def paddlerec_to_native(data: dict[str, Any], config_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Map a PaddleRec config to native sections; returns (config data, notes on unmapped keys)."""
    data = copy.deepcopy(data)
    runner = data.pop("runner", {}) or {}
    hyper = data.pop("hyper_parameters", {}) or {}
    for section, body in (("runner", runner), ("hyper_parameters", hyper)):
        if not isinstance(body, dict):
            raise ConfigError(f"{section}: expected a mapping of settings, got {body!r}")
    notes: list[str] = []
    out: dict[str, Any] = {}
    for key, value in data.items():  # native sections may sit beside them; anything else is noted
        if key in NATIVE_SECTIONS:
            out[key] = value
        else:
            notes.append(f"top-level section {key!r} is not used by ctrlab")
    # one run directory: training writes model_save_path, PaddleRec's infer reads infer_load_path
    save, load = runner.pop("model_save_path", None), runner.pop("infer_load_path", None)
    if save is not None or load is not None:
        out["run_dir"] = str(save if save is not None else load)
        if save is not None and load is not None and str(save) != str(load):
            notes.append(f"runner.infer_load_path {load!r} differs from model_save_path {save!r}: ctrlab trains "
                         f"into and evaluates {save!r}; run `ctrlab eval {load}` for the other")
    d = out.setdefault("data", {})
    t = out.setdefault("train", {})
    e = out.setdefault("eval", {})
    m = out.setdefault("model", {})
    params = m.setdefault("params", {})

    name = m.get("name") or runner.pop("model", None)
    folder = config_dir.resolve().name.lower()
    if not name:
        name = PADDLE_MODEL_NAMES.get(folder, folder)
    m["name"] = name
    escm2 = folder == "escm2" and name == "esmm"  # PaddleRec's escm2 folder, trained as ESMM
    if escm2:
        notes.append("model: ctrlab has no ESCM2; PaddleRec's escm2 config trains ctrlab's esmm (CTR and CTCVR "
                     "towers over shared embeddings, the same data and labels). ESCM2's counterfactual CVR risk "
                     "(runner.counterfact_mode IPS/DR, with its imputation tower) and its MMoE-style experts "
                     "are not implemented")

    sections = {"train": t, "eval": e, "data": d}
    for key, value in runner.items():
        if key in PADDLE_RUNNER_KEYS:
            section, native = PADDLE_RUNNER_KEYS[key]
            sections[section][native] = _checked(section, native, value, f"runner.{key}")
        elif key == "train_data_dir":
            d["train"] = [_resolve(str(value), config_dir)]
        elif key == "test_data_dir":
            d["test"] = [_resolve(str(value), config_dir)]
        elif key == "use_gpu":
            t["device"] = "cuda" if value else "cpu"
        elif key in ("infer_start_epoch", "infer_end_epoch"):
            pass  # handled below
        elif key == "model_init_path":
            if value:
                t["init_from"] = str(value)
        elif key == "use_auc":
            if not value:
                notes.append("runner.use_auc: False has no effect: ctrlab always reports exact AUC and logloss")
        elif key in ("train_reader_path", "infer_reader_path", "reader_type", "pipe_command"):
            notes.append(f"runner.{key} does not apply: ctrlab detects the input format and reads a prepared "
                         "store (set data.format to force one)")
        elif key in ("use_inference", "inference", "save_inference_feed_varnames", "save_inference_fetch_varnames"):
            notes.append(f"runner.{key} does not apply: export a deployable bundle with `ctrlab export`")
        elif key == "counterfact_mode" and escm2:
            notes.append(f"runner.counterfact_mode ({value}) does not apply: ctrlab trains ESMM, without ESCM2's "
                         "counterfactual (IPS/DR) CVR regulariser")
        elif key == "auc_num":
            notes.append(f"runner.auc_num ({value}) is not needed: ctrlab reports an exact AUC per task "
                         "(auc/<task>) and their mean")
        elif key == "use_fleet":
            if value:
                notes.append("runner.use_fleet: distributed training is chosen at launch, not in the config: "
                             "`ctrlab train -c CONFIG --nproc N` (N processes on this machine) or `torchrun ... -m "
                             "ctrlab train -c CONFIG` (several machines); train.batch_size is the global batch")
        else:
            notes.append(f"runner.{key} is not used by ctrlab")
    if "infer_start_epoch" in runner or "infer_end_epoch" in runner:
        # PaddleRec evaluates saved epochs start .. end-1 (0-based); ctrlab numbers epochs from 1
        start = _epoch_number(runner.get("infer_start_epoch", 0), "runner.infer_start_epoch", 0) + 1
        end = runner.get("infer_end_epoch")
        end = None if end is None else _epoch_number(end, "runner.infer_end_epoch", 1)
        if end is not None and end < start:
            raise ConfigError(f"runner.infer_end_epoch ({end}) must be after runner.infer_start_epoch "
                              f"({start - 1}): PaddleRec evaluates epochs start .. end-1")
        e["epochs"] = f"{start}:{end}" if end is not None else f"{start}:"

    for key, value in hyper.items():
        if key == "optimizer":
            value = value or {}
            if not isinstance(value, dict):
                raise ConfigError(f"hyper_parameters.optimizer: expected a mapping (class, learning_rate), got {value!r}")
            for okey, ovalue in value.items():
                origin = f"hyper_parameters.optimizer.{okey}"
                if okey == "class":
                    t["optimizer"] = _checked("train", "optimizer", str(ovalue).lower(), origin)
                elif okey in ("learning_rate", "learning_rate_base_lr"):  # (the latter: din, dien)
                    t["lr"] = _checked("train", "lr", ovalue, origin)
                else:
                    notes.append(f"{origin} is not used by ctrlab")
        elif key in PADDLE_TRAIN_KEYS:
            section, native = PADDLE_TRAIN_KEYS[key]
            sections[section][native] = _checked(section, native, value, f"hyper_parameters.{key}")
        elif key == "sparse_feature_number":
            # PaddleRec slot ids are (slot, value) pairs pre-hashed into [0, N): a vocabulary per
            # field keeps exactly the ids that occur, at most N rows in all
            out.setdefault("features", {}).setdefault("categorical", {}).setdefault("encoder", "vocab")
            notes.append(f"hyper_parameters.sparse_feature_number ({value}): ctrlab fits a vocabulary per slot "
                         f"on the training rows instead of one table of {value} rows (the ids that occur, at most "
                         f"{value} in all)")
        elif key in PADDLE_DMR_TABLE_SIZES:
            notes.append(f"hyper_parameters.{key} ({value}) is derived from the data by ctrlab: a vocabulary per "
                         "field holds the ids that occur instead of a table of this size")
        elif key in ("dense_input_dim", "sparse_inputs_slots", "sparse_input_dim", "slot_num"):
            notes.append(f"hyper_parameters.{key} is derived from the data by ctrlab (value {value} not needed)")
        elif name in PADDLE_MULTITASK_MODELS and _multitask_param(name, escm2, key, value, params, notes, hyper):
            pass
        elif key in PADDLE_MODEL_PARAMS:
            _model_param(name, key, value, params, notes, hyper)
        elif key in ("distributed_embedding",):
            notes.append(f"hyper_parameters.{key} does not apply (one process, local embedding tables)")
        elif key in ("cat_emb_size", "position_emb_size", "other_embedding_size"):
            pass  # (one embedding size: noted below when it differs from item_emb_size / main_embedding_size)
        elif key in ("d_model", "d_key", "d_value", "n_encoder_layers", "postprocess_cmd", "preprocess_cmd",
                     "prepostprocess_dropout") and name == "bst":
            notes.append(f"hyper_parameters.{key} ({value}): ctrlab's bst runs one encoder layer per history "
                         "over item_emb_size-wide tokens (heads from n_head), not PaddleRec's concatenated "
                         "item+cate+position tokens")
        elif key == "act" and name == "din":  # the activation of DIN's attention units
            params["attention_activation"] = str(value).lower()
        elif key == "is_sparse":
            notes.append("hyper_parameters.is_sparse does not apply: ctrlab always updates only the embedding "
                         "rows a batch touches")
        else:
            notes.append(f"hyper_parameters.{key} is not used by ctrlab")
    if name in PADDLE_SEQUENCE_MODELS and "schema" not in d and "format" not in d:
        d.update(_paddle_sequence_data(name))
        if name == "dmr":
            notes.append(f"data: PaddleRec's {name} reader layout (267 comma-separated columns: btag/cate/brand "
                         f"histories of {DMR_HISTORY_LENGTH} steps, 0 = padding, then user and ad ids, price, pid, "
                         "label); the history mask columns are not read (the 0 padding carries the same "
                         "information), nor are the match mask columns (PaddleRec's net.py masks its user-to-item "
                         "attention with them; ctrlab's lists hold the real steps only)")
        else:
            layout = ("userid/history/cate/position/target... key:value tokens" if name == "bst"
                      else "hist items;hist cates;item;cate;label")
            notes.append(f"data: PaddleRec's {name} reader layout ({layout}); histories keep their most recent "
                         f"{PADDLE_HISTORY_LENGTH} items")
    if name in PADDLE_MULTITASK_MODELS and "schema" not in d and "format" not in d:
        d.update(_multitask_data(name, hyper))
        notes.append(_multitask_layout_note(name, hyper))
    if folder == "logistic_regression" and name == "lr" and "schema" not in d and "format" not in d:
        d["format"] = "feat_idx"  # criteo_lr_reader's lines (ctrlab.data.paddle_formats)
        notes.append("data: PaddleRec's criteo_lr_reader layout (feat_idx:i x39, feat_value:v x39, label:y): "
                     "positions 1-13 are the dense I1..I13 (their feat_value), 14-39 the categorical C1..C26 "
                     "(their feat_idx as the id); feat_idx 0 is a missing value. PaddleRec's LR sums "
                     "w[feat_idx] * feat_value over the 39; ctrlab's lr has one weight per dense column and per "
                     "id of each categorical column")
    if "cat_emb_size" in hyper and hyper.get("cat_emb_size") != hyper.get("item_emb_size"):
        notes.append(f"hyper_parameters.cat_emb_size ({hyper['cat_emb_size']}) differs from item_emb_size: ctrlab "
                     "embeds every field with model.params.embedding_dim (item_emb_size)")
    if "other_embedding_size" in hyper and hyper.get("other_embedding_size") != hyper.get("main_embedding_size"):
        notes.append(f"hyper_parameters.other_embedding_size ({hyper['other_embedding_size']}) differs from "
                     "main_embedding_size: ctrlab embeds every field with model.params.embedding_dim "
                     "(main_embedding_size)")
    _merge_defaults(out, PADDLE_DEFAULTS)
    return out, notes


def _multitask_fields(hyper: dict[str, Any]) -> list[str]:
    """aitm's field columns: the names of hyper_parameters.feature_vocabulary, in order."""
    vocabulary = hyper.get("feature_vocabulary")
    if vocabulary is None:
        return list(AITM_FIELDS)
    if not isinstance(vocabulary, list) or not vocabulary or not all(
            isinstance(v, (list, tuple)) and len(v) == 2 for v in vocabulary):
        raise ConfigError(f"hyper_parameters.feature_vocabulary: expected a list of [field, vocabulary size] "
                          f"pairs, got {vocabulary!r}")
    return [str(v[0]) for v in vocabulary]


def _max_len(hyper: dict[str, Any]) -> int:
    value = hyper.get("max_len", ALICCP_MAX_LEN)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"hyper_parameters.max_len: expected a number of ids >= 1, got {value!r}")
    return value


def _multitask_data(name: str, hyper: dict[str, Any]) -> dict[str, Any]:
    """data.format and data.schema of PaddleRec's reader for multi-task model ``name``."""
    if name == "esmm":
        return _aliccp_data(_max_len(hyper))
    if name == "aitm":
        return _aitm_data(_multitask_fields(hyper))
    return _census_data()


def _multitask_layout_note(name: str, hyper: dict[str, Any]) -> str:
    if name == "esmm":
        n = _max_len(hyper)
        return ("data: PaddleRec's esmm_reader layout (Ali-CCP: sample_id,click,conversion, then field:id tokens, "
                "comma-separated; kv format with 3 positional fields); tasks: click, conversion (ctrlab's esmm "
                "scores task 1 as click AND conversion, PaddleRec's ctcvr). Every token from column 3 on is read: "
                "PaddleRec's reader starts at column 4 and loses that token (on its sample a row's only 216, 301, "
                f"205 or 206 id, or a 210 id). The fields that repeat in a line ({', '.join(ALICCP_MULTI)}) are "
                f"multi-valued lists sum-pooled over at most max_len ({n}) ids, as PaddleRec sums its padded "
                f"ids; but of a longer list ctrlab keeps the last {n} ids, PaddleRec the first {n}; the other "
                "fields are single ids. A field id outside the reader's 23 is a bad line naming it (PaddleRec "
                "skips it)")
    if name == "aitm":
        return ("data: PaddleRec's aitm_reader layout (CSV: click, purchase, then the feature_vocabulary field "
                "columns); tasks: click, purchase (task 1 scored as click AND purchase). data.schema.header: "
                "auto: a file's first line is skipped only when it is the header (train.csv), so the "
                "header-less test.csv keeps every row (PaddleRec's reader drops the first line of every file "
                "and loses a test row)")
    return (f"data: PaddleRec's census_reader layout (501 comma-separated numbers: the marital label, the income "
            f"label, then {len(CENSUS_FEATURES)} dense features feature_0..feature_{len(CENSUS_FEATURES) - 1}, "
            "used as given); tasks in PaddleRec's order: income (task 0), marital (task 1)")


def _multitask_param(name: str, escm2: bool, key: str, value: Any, params: dict[str, Any], notes: list[str],
                     hyper: dict[str, Any]) -> bool:
    """Map or note one multi-task hyper_parameters key; False when it is not a multi-task key
    (the generic mapping then handles it)."""
    from ..models import check_params  # (torch: imported only when a PaddleRec config is mapped)

    n_tasks = 2  # every PaddleRec multi-task reader yields two labels
    if escm2 and key in ("expert_num", "gate_num", "expert_size", "tower_size", "feature_size", "global_w",
                         "counterfactual_w"):
        notes.append(f"hyper_parameters.{key} ({value}) is not used: ESCM2's experts, gates and counterfactual "
                     "loss weights have no counterpart in ctrlab's esmm")
        return True
    if key == "feature_size":
        width = len(CENSUS_FEATURES) if name in ("mmoe", "ple", "shared_bottom") else None
        notes.append(f"hyper_parameters.feature_size ({value}) is derived from the data by ctrlab"
                     + (f" (the reader layout's {width} dense columns)" if width else ""))
        if width is not None and value != width:
            raise ConfigError(f"hyper_parameters.feature_size ({value}) differs from census_reader's {width} features")
        return True
    if key in ("gate_num", "task_num"):
        if value != n_tasks:
            raise ConfigError(f"hyper_parameters.{key}: expected {n_tasks} (the reader's two labels: one "
                              f"{'gate' if key == 'gate_num' else 'tower'} per task), got {value!r}")
        if key == "gate_num":
            notes.append(f"hyper_parameters.gate_num ({value}) is derived from the data by ctrlab: one gate per task "
                         "(the store's 2 tasks)")
        else:
            params["num_tasks"] = value
        return True
    if key == "cvr_fc_sizes" and name == "esmm":
        if value != hyper.get("ctr_fc_sizes", value):
            notes.append(f"hyper_parameters.cvr_fc_sizes ({value}) differs from ctr_fc_sizes: ctrlab's esmm gives both "
                         "towers model.params.tower_units (ctr_fc_sizes)")
        elif "ctr_fc_sizes" not in hyper:
            params["tower_units"] = value
        return True
    if key == "drop_prob" and name == "aitm":
        rates = value if isinstance(value, list) else [value]
        chosen = max(set(rates), key=lambda r: (rates.count(r), r)) if rates else 0.0
        if len(set(rates)) > 1:
            notes.append(f"hyper_parameters.drop_prob ({value}): ctrlab applies one dropout rate after every tower "
                         f"layer: model.params.dropout = {chosen} (the rate of most layers)")
        params["dropout"] = _checked_param(name, "dropout", chosen, "drop_prob", check_params)
        return True
    if key == "feature_vocabulary" and name == "aitm":
        notes.append(f"hyper_parameters.feature_vocabulary: its {len(_multitask_fields(hyper))} field names name the "
                     "data columns; the vocabulary sizes are derived from the data by ctrlab (a vocabulary per "
                     "field holds the ids that occur)")
        return True
    if key == "max_len" and name == "esmm":
        return True  # (used by the data layout: see its note)
    target = PADDLE_MULTITASK_PARAMS.get(key)
    if target is None or (key == "ctr_fc_sizes" and name != "esmm") or (key in ("embedding_size", "dims")
                                                                        and name != "aitm"):
        return False
    if key in PADDLE_LAYER_WIDTHS:
        value = [value]
    params[target] = _checked_param(name, target, value, key, check_params)
    return True


def _checked_param(name: str, target: str, value: Any, key: str, check_params: Any) -> Any:
    try:
        value = check_params(name, {target: value})[target]
    except ValueError as exc:
        raise ConfigError(f"hyper_parameters.{key} (ctrlab model.params.{target}): {exc}") from None
    return list(value) if isinstance(value, tuple) else value


def _epoch_number(value: Any, origin: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{origin}: expected an epoch number >= {low}, got {value!r}")
    return value
