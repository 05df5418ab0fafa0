"""The training FLOP formula counts exactly the matmul parameters plus causal attention."""

from flax import nnx

from interop.tiny_configs import tiny_config
from jax_sft.models import registry
from jax_sft.models.flops import matmul_params, train_flops_per_token


def sizes(config):
    model = nnx.eval_shape(lambda: registry.build_model(config))
    return {
        registry.path_str(p): v.get_value().size
        for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def test_untied_llama_counts_kernels_only():
    config = tiny_config("tiny-llama")
    s = sizes(config)
    layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128  # q, o; k, v (2 kv heads of 16); mlp
    assert matmul_params(config) == 2 * layer + 64 * 512  # + lm_head
    assert matmul_params(config) == sum(n for k, n in s.items() if k.endswith("kernel"))


def test_tied_head_counts_the_embedding_and_attention_term():
    config = tiny_config("tiny-gpt2")
    s = sizes(config)
    kernels = sum(n for k, n in s.items() if k.endswith("kernel"))
    assert matmul_params(config) == kernels + s["wte.embedding"]
    assert (
        train_flops_per_token(config, 128)
        == 6 * (kernels + s["wte.embedding"]) + 6 * 2 * 4 * 16 * 128
    )


def test_llama_1b_is_about_a_billion_parameters():
    assert 1.0e9 < matmul_params(tiny_config("llama-1b")) < 1.3e9
