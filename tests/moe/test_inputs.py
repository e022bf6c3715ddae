"""What enters the model: bad token ids, masks and shapes fail with a clear error, eagerly and under checkify."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.experimental import checkify

import moe
from moe.generate import generate
from moe.inputs import check_inputs
from tests.helpers.hf_reference import hf_forward, padded_batch, tiny_model

VOCAB = 128


@pytest.fixture(scope="module")
def olmoe(tmp_path_factory):
    """The HF reference model and the converted (model, params) of the same tiny checkpoint."""
    path = tmp_path_factory.mktemp("olmoe")
    hf = tiny_model("olmoe")
    hf.save_pretrained(path)
    return hf, *moe.from_pretrained(path)


@pytest.mark.parametrize("bad_id", [VOCAB, 99999, -1])
def test_out_of_vocabulary_ids_raise_like_hf(olmoe, bad_id):
    hf, model, params = olmoe
    ids, mask = padded_batch(VOCAB)
    ids[0, 3] = bad_id
    with pytest.raises(IndexError):  # the reference refuses them too
        hf(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    with pytest.raises(ValueError, match=rf"token id {bad_id} lies outside the model's vocabulary \[0, {VOCAB}\)"):
        model.apply({"params": params}, ids, mask)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        generate(model, params, ids, mask, max_new_tokens=2)


@pytest.mark.parametrize("ids, mask, message", [
    (np.ones((1, 4), np.int32), np.array([[1, 1, 2, 1]]), r"only 0 \(padding\) and 1 \(real token\), found 2\b"),
    (np.ones((1, 4), np.int32), np.array([[1, 1, -1, 1]]), "only 0 .padding. and 1"),
    (np.ones((2, 4), np.int32), np.ones((2, 5), np.int32), r"attention_mask has shape \(2, 5\), input_ids \(2, 4\)"),
    (np.ones((2, 4), np.int32), np.ones(4, np.int32), r"attention_mask has shape \(4,\)"),
    (np.ones(4, np.int32), None, r"input_ids must be \[batch, seq\], got shape \(4,\)"),
    (np.ones((2, 0), np.int32), None, r"shape \(2, 0\) is empty"),
    (np.ones((0, 3), np.int32), None, r"shape \(0, 3\) is empty"),
    (np.ones((1, 3), np.float32), None, "integer token ids, got dtype float32"),
])
def test_bad_shapes_and_masks_name_the_problem(olmoe, ids, mask, message):
    _, model, params = olmoe
    with pytest.raises(ValueError, match=message):
        model.apply({"params": params}, ids, mask)


def test_valid_inputs_pass_unchanged(olmoe):
    """Bool masks and all-padding filler rows (as the pipelines batch them) are accepted; real tokens match HF."""
    hf, model, params = olmoe
    ids, mask = padded_batch(VOCAB)
    reference, _ = hf_forward(hf, ids, mask)
    batch = np.concatenate([ids, np.zeros_like(ids[:1])]), np.concatenate([mask, np.zeros_like(mask[:1])]).astype(bool)
    logits = np.asarray(model.apply({"params": params}, *batch).logits[:2])
    real = mask.astype(bool)
    np.testing.assert_allclose(logits[real], reference[real], atol=1e-4)


def test_under_jit_values_are_checked_only_with_checkify(olmoe):
    _, model, params = olmoe
    ids, mask = padded_batch(VOCAB)
    forward = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m).logits)
    bad_ids = ids.copy()
    bad_ids[1, 5] = VOCAB + 7
    bad_mask = mask.copy()
    bad_mask[0, 0] = 3
    forward(params, bad_ids, mask)  # values cannot be checked while tracing: no error, no effect on compilation
    checked = checkify.checkify(forward, errors=checkify.user_checks)
    error, logits = checked(params, ids, mask)
    assert error.get() is None
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(forward(params, ids, mask)))
    error, _ = checked(params, bad_ids, mask)
    assert "outside the vocabulary [0, 128)" in error.get()
    error, _ = checked(params, ids, bad_mask)
    assert "only 0 (padding) and 1" in error.get()
    with pytest.raises(ValueError, match=r"attention_mask has shape"):  # shapes are checked while tracing
        forward(params, ids, mask[:, :-1])


def test_check_inputs_directly():
    check_inputs(10, jnp.array([[0, 9]]), jnp.array([[0, 1]]))
    with pytest.raises(ValueError, match="token id 10 "):
        check_inputs(10, np.array([[0, 10]]))
