"""SquareHead distillation: both backends compute the one definition in
`interop.pruning.distill`, on the same block outputs, for every model family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from test_model_parity import flax_from_torch
from tiny_hf import VOCAB, make_model

from interop.config_files import load_config
from interop.data.examples import IGNORE
from interop.errors import UserError
from interop.probe import probe_batch
from interop.pruning.distill import squarehead_sum
from jax_sft.models.layers import block_outputs
from jax_sft.prune.distill import distilled_loss
from torch_ref.train.distill import Distiller


def _batch():
    batch = probe_batch(VOCAB)
    labels = np.where(batch["attention_mask"] == 1, batch["input_ids"], IGNORE)
    labels[:, :4] = IGNORE  # a prompt: not scored, not distilled
    return {**batch, "labels": labels}


@pytest.mark.parametrize("name", ["llama-gqa-untied", "opt-post-ln-proj", "gpt2"])
def test_both_backends_distil_the_same_blocks_by_the_numpy_definition(name):
    student = make_model(name)
    distiller = Distiller(student, weight=0.5)  # the teacher: this model, before the change
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(0.9).add_(0.05)  # the student drifts from the dense teacher
    batch = _batch()
    mb_torch = {k: torch.from_numpy(v) for k, v in batch.items()}
    with distiller.student_forward():
        student(
            **{k: mb_torch[k] for k in ("input_ids", "attention_mask")},
            position_ids=mb_torch["positions"],
        )
    torch_term = float(distiller.term(mb_torch).detach())

    graphdef, ours = nnx.split(flax_from_torch(student))
    _, dense = nnx.split(flax_from_torch(distiller.teacher))
    mb = {k: jnp.asarray(v) for k, v in batch.items()} | {"segment_ids": None}
    total, sums = distilled_loss(graphdef, ours, dense, mb, 0.5)
    outputs = []
    for params in (ours, dense):
        with block_outputs() as blocks:
            nnx.merge(graphdef, params)(mb["input_ids"], mb["attention_mask"], mb["positions"])
        outputs.append([np.asarray(b) for b in blocks])
    assert len(outputs[0]) == student.config.num_hidden_layers
    want = squarehead_sum(*outputs, batch["labels"])
    assert want > 0.01
    assert abs(float(sums["distill"]) - want) <= 1e-5 * want
    assert abs(torch_term - want) <= 1e-5 * want
    assert abs(float(total) - float(sums["loss"]) - 0.5 * want) <= 1e-4 * float(total)
    # No gradient reaches the teacher; the student's does.
    grads = jax.grad(lambda s, t: distilled_loss(graphdef, s, t, mb, 0.5)[0], argnums=(0, 1))(
        ours, dense
    )
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads[1]))
    assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads[0]))


def test_unscored_tokens_and_identical_models_add_nothing():
    rng = np.random.default_rng(0)
    hidden = [rng.normal(size=(2, 6, 8)) for _ in range(3)]
    moved = [h + rng.normal(size=h.shape) for h in hidden]
    labels = np.full((2, 6), IGNORE)
    assert squarehead_sum(moved, hidden, labels) == 0.0
    labels[0, 3] = 5  # scores position 2 of row 0 only
    one = sum(
        np.mean((m[0, 2] - h[0, 2]) ** 2) / (np.var(h[0, 2]) + 1e-8)
        for m, h in zip(moved, hidden, strict=True)
    )
    assert squarehead_sum(moved, hidden, labels) == pytest.approx(one, rel=1e-12)
    assert squarehead_sum(hidden, hidden, labels) == 0.0


def test_distillation_without_a_pruning_rule_is_refused():
    with pytest.raises(UserError, match="prune.distill"):
        load_config(None, ["prune.distill=squarehead"])
