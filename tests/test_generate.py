"""KV-cache generation: token-identical to `transformers` greedy decoding, equal to
recomputing the whole sequence, compiled once per bucket, reproducible sampling."""

from functools import cache

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from interop.tiny_configs import tiny_config
from jax_sft import generate as gen
from jax_sft.models import registry
from jax_sft.models.hf_names import hf_to_ours

FAMILIES = ("tiny-llama", "tiny-qwen2", "tiny-opt", "tiny-gpt2")
EOS, PAD = 2, 0
NEW_TOKENS = 32


@cache
def models(name: str) -> tuple[transformers.PreTrainedModel, nnx.GraphDef, nnx.State]:
    """A tiny HF model with widely spread random weights (so argmax ties are rare) and
    our model holding the same weights, split for `generate`."""
    config = tiny_config(name)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(config.pop("model_type"), **config),
        attn_implementation="eager",
    )
    gen_ = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            base = 1.0 if pname.endswith("norm.weight") or ".ln_" in pname else 0.0
            p.copy_(base + 0.3 * torch.randn(p.shape, generator=gen_))
    hf.eval()
    hf_config = hf.config.to_dict()
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    pairs = hf_to_ours(
        registry.name_table(hf_config),
        state.items(),
        registry.expected_shapes(hf_config),
        "state_dict",
    )
    graphdef, params = nnx.split(registry.model_from_flat(hf_config, pairs))
    return hf, graphdef, params


def prompts(lengths: tuple[int, ...], seed: int = 0) -> list[list[int]]:
    """Random prompts that avoid the pad and eos ids."""
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 512, n).tolist() for n in lengths]


def hf_greedy(hf: transformers.PreTrainedModel, batch: list[list[int]]) -> list[list[int]]:
    """`transformers` greedy new tokens, left-padded with an attention mask, cut at eos."""
    width = max(len(p) for p in batch)
    ids, mask = gen.left_pad(batch, width, PAD)
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )
    rows = out[:, width:].tolist()
    return [row[: row.index(EOS) + 1] if EOS in row else row for row in rows]


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_matches_transformers_and_recompute(name):
    hf, graphdef, params = models(name)
    batch = prompts((5, 11, 3))
    ours = gen.generate(graphdef, params, batch, NEW_TOKENS, eos_token_id=EOS, pad_token_id=PAD)
    assert ours == hf_greedy(hf, batch)
    assert sum(len(set(row)) for row in ours) > 10, "the continuation is not one token repeated"
    recomputed = gen.generate(
        graphdef, params, batch, NEW_TOKENS, eos_token_id=EOS, pad_token_id=PAD, recompute=True
    )
    assert recomputed == ours


def test_segments_cover_every_step_once():
    assert gen.segment_ends(1) == []
    assert gen.segment_ends(32) == [32]
    assert gen.segment_ends(33) == [33]
    assert gen.segment_ends(100) == [33, 65, 97, 100]


def test_a_cache_grown_segment_by_segment_decodes_as_recomputing():
    _, graphdef, params = models("tiny-llama")
    batch, kw = prompts((5, 11, 3), seed=2), dict(eos_token_id=None, pad_token_id=PAD)
    steps = 2 * gen.SEGMENT + 6  # three segments, the last one short
    cached = gen.generate(graphdef, params, batch, steps, **kw)
    assert [len(row) for row in cached] == [steps] * 3
    assert gen.generate(graphdef, params, batch, steps, recompute=True, **kw) == cached


def test_a_prompt_length_in_the_same_bucket_does_not_compile_again():
    _, graphdef, params = models("tiny-llama")
    kw = dict(eos_token_id=EOS, pad_token_id=PAD)
    first = gen.generate(graphdef, params, prompts((4, 7, 2)), 8, **kw)
    compiled = gen.compilations()
    second = gen.generate(graphdef, params, prompts((9, 13, 6), seed=1), 8, **kw)
    assert gen.compilations() == compiled
    assert len(first) == len(second) == 3
    gen.generate(graphdef, params, prompts((20, 3, 5)), 8, **kw)
    assert gen.compilations() == compiled + 2, "a longer bucket compiles prefill and decode"


def test_padding_does_not_change_a_prompts_tokens():
    _, graphdef, params = models("tiny-qwen2")
    batch = prompts((5, 11, 3))
    kw = dict(eos_token_id=EOS, pad_token_id=PAD)
    together = gen.generate(graphdef, params, batch, 8, **kw)
    alone = gen.generate(graphdef, params, [batch[2]] * 3, 8, **kw)
    assert alone[0] == together[2]


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    _, graphdef, params = models("tiny-llama")
    batch = prompts((5, 11, 3))
    kw = dict(eos_token_id=EOS, pad_token_id=PAD)
    sample = dict(temperature=1.0, top_k=50, top_p=0.95)
    a = gen.generate(graphdef, params, batch, 16, seed=1, **sample, **kw)
    assert gen.generate(graphdef, params, batch, 16, seed=1, **sample, **kw) == a
    assert gen.generate(graphdef, params, batch, 16, seed=2, **sample, **kw) != a
    greedy = gen.generate(graphdef, params, batch, 16, **kw)
    assert gen.generate(graphdef, params, batch, 16, temperature=0.7, top_k=1, **kw) == greedy


def test_bad_settings_are_refused():
    from interop.errors import UserError

    _, graphdef, params = models("tiny-llama")
    kw = dict(eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(UserError, match="at least one token"):
        gen.generate(graphdef, params, [[5], []], 4, **kw)
    with pytest.raises(UserError, match="top_p"):
        gen.generate(graphdef, params, [[5]], 4, top_p=1.5, temperature=1.0, **kw)
