"""minGRU, minLSTM, LRU and RG-LRU: the papers' equations, parallel == sequential == one step, and
the same trainer, sampler, sweep and data modes as the classic cells."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_experiment, tiny_config

from charrnn_jax import models
from charrnn_jax.inference import sampler
from charrnn_jax.models import lru, registry, rglru
from charrnn_jax.store import metric_logging
from charrnn_jax.training import loop

CELLS = [name for name, cell in registry.CELLS.items() if cell.residual_block]
F32_EPS = float(np.finfo(np.float32).eps)
TOKENS = jax.random.randint(jax.random.key(1), (3, 41), 0, 256)
# Row 0 full, rows 1 and 2 left-padded by 5 and 17 steps (the sampler's window mode).
LEFT_PADDED = jnp.arange(41)[None, :] >= jnp.array([0, 5, 17])[:, None]


def _model(cell, parallel=True, **kwargs):
    scan = "parallel" if parallel else "sequential"
    config = models.ModelConfig(embed_dim=16, hidden_size=32, num_layers=2, cell=cell, scan=scan)
    return models.CharRNN(dataclasses.replace(config, **kwargs))


def _params(cell):
    return _model(cell).init(jax.random.key(0), TOKENS)["params"]


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _g(x):
    return np.where(x >= 0, x + 0.5, _sigmoid(x))


def _gelu(x):  # flax's nn.gelu: the tanh approximation.
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _dense(p, x):
    return x @ p["kernel"] + p["bias"]


def _rglru_reference_step(p, h, x):
    """Griffin (De et al. 2024), eq. 1-4, inside its recurrent block without the Conv1D."""
    u = _dense(p["value"], x)
    r = _sigmoid(u @ p["W_a"] + p["b_a"])  # eq. 1
    i = _sigmoid(u @ p["W_x"] + p["b_x"])  # eq. 2
    a = _sigmoid(p["Lambda"]) ** (8 * r)  # eq. 3, c = 8
    h = a * h + np.sqrt(1 - a**2) * (i * u)  # eq. 4
    return h, _dense(p["out"], h * _gelu(_dense(p["gate"], x)))


def _reference_step(cell, p, h, x):
    """One step of each paper's recurrence in numpy, from its equations."""
    if cell == "rglru":
        return _rglru_reference_step(p, h, x)
    if cell == "lru":  # Orvieto et al. 2023, eq. 3-7.
        lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
        b = (p["B_re"] + 1j * p["B_im"]).T
        c = (p["C_re"] + 1j * p["C_im"]).T
        h = lam * h + np.exp(p["gamma_log"]) * (x @ b.T)
        return h, (h @ c.T).real + p["D"] * x
    k = x @ p["gates"]["Dense_0"]["kernel"] + p["gates"]["Dense_0"]["bias"]
    if cell == "mingru":  # Feng et al. 2024, Section 3.1 with g of Appendix B.3.
        k_z, k_h = np.split(k, 2, axis=-1)
        z = _sigmoid(k_z)
        h = (1 - z) * h + z * _g(k_h)
    else:  # minLSTM, Section 3.2: f and i normalised to sum to 1.
        k_f, k_i, k_h = np.split(k, 3, axis=-1)
        f, i = _sigmoid(k_f), _sigmoid(k_i)
        h = f / (f + i) * h + i / (f + i) * _g(k_h)
    return h, h


def _carry_atol(reference, steps: int) -> float:
    """What float32 can carry over `steps` recurrence steps: each step's multiply-add rounds
    once (relative eps), a parallel scan reassociates the same products, and the state's
    scale is its largest magnitude; 4x for the two scans' independent rounding. This does
    not depend on the CPU (an AVX2 Zen 3 and an AVX-512 Zen 4 order the sums differently).
    """
    scale = max(1.0, float(np.max(np.abs(np.asarray(reference)))))
    return 4 * steps * F32_EPS * scale


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("parallel", [True, False])
def test_the_recurrence_is_the_papers_equations(cell, parallel):
    x = np.asarray(jax.random.normal(jax.random.key(2), (23, 4, 32)))
    module = registry.CELLS[cell].module(32, jnp.float32, parallel)
    carry = registry.CELLS[cell].zero_state(4, 32)
    params = module.init(jax.random.key(3), carry, x)["params"]
    _, ys = module.apply({"params": params}, carry, x)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.zeros((4, 32), np.complex128 if cell == "lru" else np.float64)
    expected = []
    for t in range(x.shape[0]):
        h, y = _reference_step(cell, p, h, x[t].astype(np.float64))
        expected.append(y)
    np.testing.assert_allclose(ys, np.stack(expected), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("valid", [None, LEFT_PADDED], ids=["full", "left_padded"])
def test_parallel_sequential_and_one_step_forms_agree(cell, valid):
    params = {"params": _params(cell)}
    parallel, sequential = _model(cell, True), _model(cell, False)
    logits_p, carry_p = parallel.apply(params, TOKENS, valid=valid)
    logits_s, carry_s = sequential.apply(params, TOKENS, valid=valid)
    carry = sequential.initialize_carry(3)
    steps = []
    step = jax.jit(lambda c, t, v: sequential.apply(params, t, c, valid=v))
    for t in range(TOKENS.shape[1]):
        v = None if valid is None else valid[:, t : t + 1]
        logits, carry = step(carry, TOKENS[:, t : t + 1], v)
        steps.append(logits)
    one_step = jnp.concatenate(steps, axis=1)
    if valid is not None:  # Logits at padded steps mean nothing; compare the rest.
        mask = np.asarray(valid)[..., None]
        logits_p, logits_s, one_step = (
            np.where(mask, a, 0) for a in (logits_p, logits_s, one_step)
        )
    np.testing.assert_allclose(logits_p, logits_s, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(one_step, logits_s, atol=2e-5, rtol=1e-5)
    for a, b, c in zip(*map(jax.tree.leaves, (carry_p, carry_s, carry)), strict=True):
        atol = _carry_atol(b, TOKENS.shape[1])
        np.testing.assert_allclose(a, b, atol=atol, rtol=1e-5)
        np.testing.assert_allclose(c, b, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_parallel_and_sequential_gradients_agree(cell):
    params = _params(cell)
    targets = jnp.roll(TOKENS, -1, axis=1)

    def loss(p, model):
        logits, _ = model.apply({"params": p}, TOKENS, valid=LEFT_PADDED)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
        return jnp.sum(nll * LEFT_PADDED) / LEFT_PADDED.sum()

    grads_p = jax.grad(loss)(params, _model(cell, True))
    grads_s = jax.grad(loss)(params, _model(cell, False))
    for a, b in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_s), strict=True):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_a_sequence_split_in_two_with_the_carry_equals_one_pass(cell):
    params, model = {"params": _params(cell)}, _model(cell)
    whole, carry_whole = model.apply(params, TOKENS)
    first, carry = model.apply(params, TOKENS[:, :19])
    second, carry_split = model.apply(params, TOKENS[:, 19:], carry)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, atol=2e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(carry_split), jax.tree.leaves(carry_whole), strict=True):
        np.testing.assert_allclose(a, b, atol=_carry_atol(b, TOKENS.shape[1]), rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_bfloat16_stays_close_to_float32(cell):
    params = {"params": _params(cell)}
    f32, _ = _model(cell).apply(params, TOKENS)
    bf16, carry = _model(cell, dtype="bfloat16").apply(params, TOKENS)
    assert bf16.dtype == jnp.float32 and all(c.dtype == jnp.float32 for c in jax.tree.leaves(carry))
    np.testing.assert_allclose(jax.nn.softmax(bf16), jax.nn.softmax(f32), atol=0.02)


def test_lru_starts_on_the_ring_with_normalised_inputs():
    params = _params("lru")["blocks"]["block_0"]["recurrence"]
    modulus = np.exp(-np.exp(params["nu_log"]))
    assert modulus.min() >= lru.LRU_R_MIN - 1e-6
    assert modulus.max() <= lru.LRU_R_MAX + 1e-6
    np.testing.assert_allclose(np.exp(params["gamma_log"]), np.sqrt(1 - modulus**2), rtol=1e-5)
    phase = np.exp(params["theta_log"])
    assert phase.min() >= 0 and phase.max() <= lru.LRU_MAX_PHASE


def test_rglru_starts_on_the_ring_and_its_gates_stay_in_bounds():
    params = _params("rglru")["blocks"]["block_0"]["recurrence"]
    a = 1 / (1 + np.exp(-np.asarray(params["Lambda"])))  # sigma(Lambda), eq. 3
    assert a.min() >= rglru.RGLRU_R_MIN - 1e-6 and a.max() <= rglru.RGLRU_R_MAX + 1e-6
    x = jax.random.normal(jax.random.key(4), (7, 2, 32)) * 10
    a_t, b_t = rglru.gates(
        x, params["W_a"], params["b_a"], params["W_x"], params["b_x"], params["Lambda"]
    )
    # a_t in (0, 1] (1 in float32 when r_t is near 0) and the input term bounded by |x|:
    # the state can never blow up.
    assert np.all((a_t > 0) & (a_t <= 1)) and np.all(np.abs(b_t) <= np.abs(x) + 1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_the_sampler_batches_ragged_prompts_exactly(cell):
    model = _model(cell, False)
    params = jax.tree.map(lambda p: p * 2.0, _params(cell))
    prompts = ["ROMEO:", "a", "", "The quick brown fox"]
    keys = jax.random.split(jax.random.key(3), len(prompts))
    for window in (None, 8):  # Carry decoding, and re-priming over a sliding window.
        kwargs = {"length": 24, "temperature": 1.0, "window": window}
        batched, lengths = sampler.sample(params, model, prompts, rng=keys, **kwargs)
        for i, prompt in enumerate(prompts):
            alone, _ = sampler.sample(params, model, [prompt], rng=keys[i : i + 1], **kwargs)
            np.testing.assert_array_equal(batched[i], alone[0], err_msg=f"{prompt!r} {window}")


def _losses(workdir):
    return [r["train_loss"] for r in metric_logging.read_jsonl(workdir / "metrics.jsonl")]


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_each_cell_trains_the_tiny_setup_to_a_falling_loss(tmp_path, cell):
    config = load_experiment("shakespeare", "tiny")
    config.model.cell = cell
    config.model.hidden_size, config.data.seq_len = 64, 64
    config.train.num_steps, config.train.log_every = 60, 20
    config.train.eval_every = config.train.checkpoint_every = 60
    config.sample.length = 40
    summary = loop.train_and_evaluate(config, tmp_path, devices=jax.devices()[:2])
    first, *_, last = _losses(tmp_path)
    assert last < first - 0.5, _losses(tmp_path)
    assert np.isfinite(summary["val_loss"]) and summary["val_loss"] < 3.0


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_stream_mode_and_four_devices_give_one_devices_losses(tmp_path, cell):
    losses = {}
    for n in (1, 4):
        config = tiny_config(
            **{
                "train.num_steps": 3,
                "train.log_every": 1,
                "model.cell": cell,
                "data.mode": "stream",
            }
        )
        loop.train_and_evaluate(config, tmp_path / f"dev{n}", devices=jax.devices()[:n])
        losses[n] = _losses(tmp_path / f"dev{n}")
    assert len(losses[1]) == 3
    np.testing.assert_allclose(losses[4], losses[1], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_vmapped_sweep_of_lrus_equals_plain_runs(tmp_path):
    variants = [{"seed": 0, "train.learning_rate": 3e-3}, {"seed": 1, "train.grad_clip_norm": 0.5}]
    common = {"model.cell": "lru", "model.dropout": 0.1, "train.grad_clip_norm": 1.0}
    configs = [tiny_config(**{**common, **v}) for v in variants]
    workdirs = [tmp_path / f"vmapped{i}" for i in range(2)]
    loop.train_vmapped(configs, workdirs, devices=jax.devices()[:2])
    for i, config in enumerate(configs):
        loop.train_and_evaluate(config, tmp_path / f"plain{i}", devices=jax.devices()[:2])
        np.testing.assert_allclose(_losses(workdirs[i]), _losses(tmp_path / f"plain{i}"), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name, cell", [("dinos", "minlstm"), ("sentiment", "mingru")])
def test_line_and_labelled_modes_train_with_a_linear_cell(tmp_path, name, cell):
    config = load_experiment(name)
    config.model.cell, config.model.hidden_size, config.model.embed_dim = cell, 32, 16
    config.train.num_steps = config.train.eval_every = config.train.checkpoint_every = 4
    config.train.batch_size, config.train.log_every, config.train.eval_batches = 8, 2, 2
    summary = loop.train_and_evaluate(config, tmp_path, devices=jax.devices()[:2])
    assert summary["final_step"] == 4 and np.isfinite(summary["val_loss"])
    if name == "sentiment":
        assert 0.0 <= summary["val_accuracy"] <= 1.0
