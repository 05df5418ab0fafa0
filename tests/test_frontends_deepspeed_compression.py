"""DeepSpeed's `compression_training` block read as `prune` rules: mapping, defaults,
notes and refusals (pure Python: no model, no JAX, except the one CLI test)."""

import json
from pathlib import Path

import pytest

from interop.config import RunConfig
from interop.config_files import load_config
from interop.errors import UserError
from interop.frontends.deepspeed_json import overrides_from_deepspeed
from interop.prune_config import PruneGroup
from interop.pruning.plan import plan
from interop.tiny_configs import TINY_CONFIGS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ROOT = "compression_training"


def _write(tmp_path: Path, block: object) -> Path:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2, ROOT: block}))
    return path


def _read(tmp_path: Path, block: object) -> tuple[dict, list[str], Path]:
    path = _write(tmp_path, block)
    overrides, notes = overrides_from_deepspeed(path)
    return overrides, notes, path


def _validated(path: Path, overrides: dict) -> RunConfig:
    return load_config(None, layers=[(str(path), overrides)])


def _technique(shared: dict, groups: dict | None = None) -> dict:
    section: dict = {"shared_parameters": {"enabled": True, "method": "l1", **shared}}
    if groups is not None:
        section["different_groups"] = groups
    return section


def _tiny_llama_shapes() -> tuple[dict, dict[str, tuple]]:
    """tiny-llama's HF config and tensor shapes, written out (no model is built)."""
    c = TINY_CONFIGS["tiny-llama"]
    h, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    shapes: dict[str, tuple] = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            f"{p}input_layernorm.weight": (h,),
            f"{p}self_attn.q_proj.weight": (h, h),
            f"{p}self_attn.k_proj.weight": (kv, h),
            f"{p}self_attn.v_proj.weight": (kv, h),
            f"{p}self_attn.o_proj.weight": (h, h),
            f"{p}post_attention_layernorm.weight": (h,),
            f"{p}mlp.gate_proj.weight": (inter, h),
            f"{p}mlp.up_proj.weight": (inter, h),
            f"{p}mlp.down_proj.weight": (h, inter),
        }
    shapes |= {"model.norm.weight": (h,), "lm_head.weight": (vocab, h)}
    return c, shapes


def test_example_l1_config_prunes_every_attention_and_mlp_projection() -> None:
    path = CONFIGS / "ds_prune_l1.json"
    overrides, notes = overrides_from_deepspeed(path)
    assert notes == []
    group = {"name": "sp1", "modules": ["self_attn", "mlp"], "sparsity": 0.5, "related_modules": []}
    rule = {"method": "magnitude", "pattern": "unstructured", "start_step": 0, "every": 1}
    assert overrides["prune"] == {"rules": [{**rule, "groups": [group]}]}
    cfg = _validated(path, overrides)
    assert cfg.training_mode == "prune"
    assert (cfg.model.dtype, cfg.train.micro_batch_size, cfg.optim.grad_clip) == ("float32", 2, 1.0)
    assert cfg.parallel.zero_stage == 0
    hf_config, shapes = _tiny_llama_shapes()
    chosen = sorted(u.key for u in plan(cfg.prune, hf_config, shapes))
    assert chosen == sorted(n for n in shapes if "_proj." in n)  # not embeddings, norms, head
    assert cfg.prune.rules[0].cut_steps() == [0]


def test_example_rows_config_cuts_ffn_neurons_with_the_down_projection() -> None:
    path = CONFIGS / "ds_prune_rows.json"
    overrides, notes = overrides_from_deepspeed(path)
    assert notes == []
    cfg = _validated(path, overrides)
    (rule,) = cfg.prune.rules
    assert (rule.pattern, rule.method, rule.start_step, rule.end_step) == (
        "rows",
        "magnitude",
        0,
        None,
    )
    assert rule.groups == [
        PruneGroup(
            name="rp1",
            modules=["mlp.up_proj", "mlp.gate_proj"],
            sparsity=0.5,
            related_modules=["mlp.down_proj"],
        )
    ]
    hf_config, shapes = _tiny_llama_shapes()
    units = plan(cfg.prune, hf_config, shapes)
    assert [u.key for u in units] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert all(u.keep_count(0.5) == 64 for u in units)  # of 128 neurons


def test_sparse_pruning_maps_shared_parameters_and_groups(tmp_path: Path) -> None:
    shared = {
        "schedule_offset": 10,
        "schedule_offset_end": 90,
        "schedule_offset_stride": 20,
        "dense_ratio": 0.4,
        "excluded_modules": ["lm_head", "layers\\.0\\."],
    }
    groups = {
        "own": {"params": {"dense_ratio": 0.25}, "modules": ["q_proj", "k_proj"]},
        "shared": {"params": {}, "modules": ["mlp"]},
        "everything": {"params": {"dense_ratio": 1}},
    }
    overrides, notes, path = _read(tmp_path, {"sparse_pruning": _technique(shared, groups)})
    assert notes == []
    (rule,) = _validated(path, overrides).prune.rules
    assert rule.pattern == "unstructured" and rule.method == "magnitude"
    assert (rule.start_step, rule.end_step, rule.every) == (10, 90, 20)
    assert rule.cut_steps() == [10, 30, 50, 70, 90]  # gradual, on the cubic schedule
    assert rule.excluded_modules == ["lm_head", "layers\\.0\\."]
    assert [(g.name, g.modules) for g in rule.groups] == [
        ("own", ["q_proj", "k_proj"]),
        ("shared", ["mlp"]),
        ("everything", [""]),  # no modules: every prunable module
    ]
    assert [g.sparsity for g in rule.groups] == pytest.approx([0.75, 0.6, 0.0])


def test_without_groups_the_shared_dense_ratio_prunes_every_module(tmp_path: Path) -> None:
    for groups in (None, {}):
        block = {"sparse_pruning": _technique({"dense_ratio": 0.3}, groups)}
        overrides, _, path = _read(tmp_path, block)
        (rule,) = _validated(path, overrides).prune.rules
        assert [(g.name, g.modules) for g in rule.groups] == [("sparse_pruning", [""])]
        assert rule.groups[0].sparsity == pytest.approx(0.7)


def test_group_without_a_dense_ratio_keeps_half_as_the_docs_say(tmp_path: Path) -> None:
    overrides, _, path = _read(tmp_path, {"sparse_pruning": _technique({}, {"g": {}})})
    (rule,) = _validated(path, overrides).prune.rules
    assert rule.groups == [PruneGroup(name="g", modules=[""], sparsity=0.5)]


def test_schedule_defaults_and_an_end_not_after_the_offset_is_one_cut(tmp_path: Path) -> None:
    overrides, notes, _ = _read(tmp_path, {"sparse_pruning": _technique({"dense_ratio": 0.5})})
    rule = overrides["prune"]["rules"][0]
    assert (rule["start_step"], rule["every"], "end_step" in rule) == (0, 1, False)
    assert notes == []
    shared = {"dense_ratio": 0.5, "schedule_offset": 30, "schedule_offset_end": 30}
    shared["schedule_offset_stride"] = 5
    overrides, notes, path = _read(tmp_path, {"sparse_pruning": _technique(shared)})
    (rule,) = _validated(path, overrides).prune.rules
    assert (rule.start_step, rule.end_step, rule.cut_steps()) == (30, None, [30])
    key = f"{path}: {ROOT}.sparse_pruning.shared_parameters"
    assert notes == [
        f"{key}.schedule_offset_end 30 is not after schedule_offset 30: one cut at step 30",
        f"{key}.schedule_offset_stride has no effect without a schedule_offset_end after "
        "schedule_offset (one cut)",
    ]


def test_row_pruning_flattens_related_modules(tmp_path: Path) -> None:
    groups = {
        "rp1": {
            "params": {"dense_ratio": 0.75},
            "modules": ["up_proj", "gate_proj"],
            "related_modules": [["down_proj"], ["mlp\\.down", "down_proj"]],
        },
        "rp2": {"modules": ["layers\\.1\\.mlp"], "related_modules": None},
    }
    block = {"row_pruning": _technique({"schedule_offset": 5}, groups)}
    overrides, _, path = _read(tmp_path, block)
    (rule,) = _validated(path, overrides).prune.rules
    assert (rule.pattern, rule.start_step) == ("rows", 5)
    assert rule.groups[0].related_modules == ["down_proj", "mlp\\.down", "down_proj"]
    assert rule.groups[0].sparsity == pytest.approx(0.25)
    assert rule.groups[1].related_modules == []


def test_head_pruning_with_l1_ranks_heads_and_keeps_num_heads(tmp_path: Path) -> None:
    groups = {"hp": {"params": {"dense_ratio": 0.5}, "modules": ["o_proj"]}}
    block = {"head_pruning": _technique({"num_heads": 4}, groups)}
    overrides, _, path = _read(tmp_path, block)
    (rule,) = _validated(path, overrides).prune.rules
    assert (rule.pattern, rule.method, rule.num_heads) == ("heads", "magnitude", 4)
    hf_config, shapes = _tiny_llama_shapes()
    keys = [u.key for u in plan(_validated(path, overrides).prune, hf_config, shapes)]
    assert keys == ["model.layers.0.self_attn", "model.layers.1.self_attn"]


def test_each_enabled_technique_is_one_rule_in_file_order(tmp_path: Path) -> None:
    block = {
        "head_pruning": _technique({"num_heads": 4, "dense_ratio": 0.5}),
        "row_pruning": _technique({"dense_ratio": 0.5}),
        "sparse_pruning": _technique({"dense_ratio": 0.5}, {"g": {"modules": ["q_proj"]}}),
    }
    overrides, _, path = _read(tmp_path, block)
    rules = _validated(path, overrides).prune.rules
    assert [r.pattern for r in rules] == ["heads", "rows", "unstructured"]


def test_disabled_techniques_add_no_rule_and_leave_a_note(tmp_path: Path) -> None:
    block = {
        "sparse_pruning": {"shared_parameters": {"enabled": False, "method": "topk"}},
        "row_pruning": {"different_groups": {"rp": {"modules": ["mlp"]}}},  # enabled missing
        "weight_quantization": {"shared_parameters": {"enabled": False}},
        "layer_reduction": {"enabled": False},
    }
    overrides, notes, path = _read(tmp_path, block)
    assert "prune" not in overrides
    assert _validated(path, overrides).prune.rules == []
    assert notes == [
        f"{path}: {ROOT}.sparse_pruning is not enabled (shared_parameters.enabled); "
        "it adds no pruning rule",
        f"{path}: {ROOT}.row_pruning is not enabled (shared_parameters.enabled); "
        "it adds no pruning rule",
        f"{path}: {ROOT}.weight_quantization is not enabled; ignored",
        f"{path}: {ROOT}.layer_reduction is not enabled; ignored",
    ]
    block["row_pruning"]["shared_parameters"] = {"enabled": True}
    overrides, notes, _ = _read(tmp_path, block)
    assert [r["pattern"] for r in overrides["prune"]["rules"]] == ["rows"]
    assert not any("not a DeepSpeed config key" in n for n in notes)


SP = f"{ROOT}.sparse_pruning"
SHARED = f"{SP}.shared_parameters"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            {"sparse_pruning": _technique({"method": "snip_momentum", "dense_ratio": 0.4})},
            f"{SHARED}.method: snip_momentum is not implemented here (l1 and topk are)",
        ),
        (
            {"row_pruning": _technique({"method": "l2", "dense_ratio": 0.5})},
            f"{ROOT}.row_pruning.shared_parameters.method: 'l2' is not one of l1, topk, "
            "snip_momentum",
        ),
        (
            {
                "sparse_pruning": _technique(
                    {"method": "topk", "schedule_offset": 2, "schedule_offset_end": 9}
                )
            },
            f"{SHARED}.schedule_offset_end: 9, but topk keeps dense_ratio from schedule_offset on",
        ),
        (
            {"head_pruning": _technique({"dense_ratio": 0.5})},
            f"{ROOT}.head_pruning.shared_parameters.num_heads is missing",
        ),
        (
            {"sparse_pruning": _technique({"block_pattern": "4x1", "dense_ratio": 0.5})},
            f"{SHARED}.block_pattern: '4x1' is not implemented here",
        ),
        (
            {"sparse_pruning": _technique({"block_pattern": "1x1", "dense_ratio": 0.5})},
            f"{SHARED}.block_pattern: '1x1' is not implemented here",
        ),
        (
            {"channel_pruning": {"shared_parameters": {"enabled": True}}},
            f"{ROOT}.channel_pruning is not implemented here",
        ),
        (
            {"weight_quantization": {"shared_parameters": {"enabled": True}}},
            f"{ROOT}.weight_quantization is not implemented here",
        ),
        (
            {"activation_quantization": {"shared_parameters": {"enabled": True}}},
            f"{ROOT}.activation_quantization is not implemented here",
        ),
        (
            {"layer_reduction": {"enabled": True, "keep_number_layer": 5}},
            f"{ROOT}.layer_reduction is not implemented here",
        ),
        ({"sparse_prunning": {}}, f"{ROOT}.sparse_prunning is not a DeepSpeed key here"),
        (
            {"sparse_pruning": {"shared_parameters": {"enabeld": True}}},
            f"{SHARED}.enabeld is not a DeepSpeed key here",
        ),
        (
            {"sparse_pruning": _technique({"num_heads": 4, "dense_ratio": 0.5})},
            f"{SHARED}.num_heads is not a DeepSpeed key here",
        ),
        (
            {"sparse_pruning": {**_technique({}), "groups": {}}},
            f"{SP}.groups is not a DeepSpeed key here",
        ),
        (
            {"sparse_pruning": _technique({}, {"g": {"module": ["mlp"]}})},
            f"{SP}.different_groups.g.module is not a DeepSpeed key here",
        ),
        (
            {"sparse_pruning": _technique({}, {"g": {"params": {"sparsity": 0.5}}})},
            f"{SP}.different_groups.g.params.sparsity is not a DeepSpeed key here",
        ),
        (
            {"sparse_pruning": {"shared_parameters": {"enabled": "yes"}}},
            f"{SHARED}.enabled must be true or false, got 'yes'",
        ),
        (
            {"sparse_pruning": _technique({"schedule_offset": -1, "dense_ratio": 0.5})},
            f"{SHARED}.schedule_offset must be an integer >= 0, got -1",
        ),
        (
            {"sparse_pruning": _technique({"schedule_offset_stride": 0, "dense_ratio": 0.5})},
            f"{SHARED}.schedule_offset_stride must be an integer >= 1, got 0",
        ),
        (
            {"sparse_pruning": _technique({}, {"g": {"modules": "mlp"}})},
            f"{SP}.different_groups.g.modules must be a list of module name regexes, got 'mlp'",
        ),
        (
            {"sparse_pruning": _technique({}, {"g": {"modules": ["("]}})},
            f"{SP}.different_groups.g.modules: invalid regex '('",
        ),
        (
            {"row_pruning": _technique({}, {"g": {"related_modules": ["down_proj"]}})},
            f"{ROOT}.row_pruning.different_groups.g.related_modules[0] must be a list",
        ),
        (
            {"sparse_pruning": _technique({})},
            f"{SP}.different_groups is missing or empty and shared_parameters has no dense_ratio",
        ),
        ([1], f"{ROOT} must be a JSON object, got [1]"),
    ],
)
def test_refusals_name_the_key(tmp_path: Path, block: object, message: str) -> None:
    path = _write(tmp_path, block)
    with pytest.raises(UserError) as caught:
        overrides_from_deepspeed(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: {message}"), text
    assert "\n" not in text


@pytest.mark.parametrize(("ratio", "shown"), [(0, "0"), (1.5, "1.5"), ("x", "'x'"), (True, "True")])
def test_dense_ratio_outside_zero_to_one_is_refused(tmp_path: Path, ratio, shown) -> None:
    groups = {"sp1": {"params": {"dense_ratio": ratio}, "modules": ["mlp"]}}
    path = _write(tmp_path, {"sparse_pruning": _technique({}, groups)})
    with pytest.raises(UserError) as caught:
        overrides_from_deepspeed(path)
    key = f"{SP}.different_groups.sp1.params.dense_ratio"
    assert str(caught.value) == f"{path}: {key} must be in (0, 1], got {shown}"
    path = _write(tmp_path, {"row_pruning": _technique({"dense_ratio": ratio})})
    with pytest.raises(UserError) as caught:
        overrides_from_deepspeed(path)
    key = f"{ROOT}.row_pruning.shared_parameters.dense_ratio"
    assert str(caught.value) == f"{path}: {key} must be in (0, 1], got {shown}"


def test_train_with_a_bad_compression_block_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from jax_sft import cli  # JAX is imported for the mesh; no model is built

    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, {"sparse_pruning": _technique({"method": "snip_momentum"})})
    assert cli.main(["train", "--deepspeed_config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{SHARED}.method: snip_momentum is not implemented here (l1 and topk are)" in err[0]
    assert "Traceback" not in err[0]
    assert list(tmp_path.iterdir()) == [path]  # nothing was written


def test_topk_is_learned_scores_and_head_pruning_defaults_to_it(tmp_path: Path) -> None:
    block = {
        "sparse_pruning": _technique({"method": "topk", "schedule_offset": 3, "dense_ratio": 0.5}),
        "head_pruning": {
            "shared_parameters": {"enabled": True, "num_heads": 4},
            "different_groups": {"hp": {"params": {"dense_ratio": 0.5}, "modules": ["o_proj"]}},
        },
    }
    overrides, _, path = _read(tmp_path, block)
    rules = _validated(path, overrides).prune.rules
    assert [(r.pattern, r.method, r.start_step) for r in rules] == [
        ("unstructured", "topk", 3),
        ("heads", "topk", 0),
    ]
