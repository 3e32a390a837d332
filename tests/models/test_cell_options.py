"""Cells' own options (models/registry.py): every cell with options gets a config block
`model.<cell>` derived from its options class, overrides reach the built model, and bad
values, unknown keys and wrong types are one line. Parametrized over registry.CELLS, so a
new cell with options is tested the moment it is registered."""

import dataclasses

import pytest
from conftest import tiny_config

from charrnn_jax import config_lib, models
from charrnn_jax.errors import UserError
from charrnn_jax.models import registry

WITH_OPTIONS = [name for name in registry.CELLS if registry.options_fields(name)]


def test_the_proof_cells_have_options():
    assert {"mogrifier_gru", "elman"} <= set(WITH_OPTIONS)


@pytest.mark.parametrize("cell", WITH_OPTIONS)
def test_the_config_block_is_the_options_class(cell):
    block = config_lib.base_config().model[cell]
    assert dict(block) == registry.options_fields(cell)
    # The defaults build the options class's defaults.
    typed = models.ModelConfig.from_block(tiny_config(**{"model.cell": cell}).model)
    assert typed.options == (registry.CELLS[cell].options())


@pytest.mark.parametrize("cell", WITH_OPTIONS)
def test_an_override_reaches_the_built_model(cell):
    field = dataclasses.fields(registry.CELLS[cell].options)[0]
    value = _other_valid_value(cell, field)
    config = tiny_config(**{"model.cell": cell, f"model.{cell}.{field.name}": value})
    model = models.CharRNN(models.ModelConfig.from_block(config.model))
    assert getattr(model.config.options, field.name) == value


@pytest.mark.parametrize("cell", WITH_OPTIONS)
def test_unknown_keys_and_wrong_types_are_refused(cell):
    with pytest.raises(UserError):
        tiny_config(**{f"model.{cell}.no_such_option": 1})
    field = dataclasses.fields(registry.CELLS[cell].options)[0]
    wrong = [1.5] if isinstance(field.default, str) else ["a string"]
    with pytest.raises(UserError):
        tiny_config(**{f"model.{cell}.{field.name}": wrong[0]})


def test_a_bad_value_is_one_line_naming_the_key():
    config = tiny_config(**{"model.cell": "elman", "model.elman.nonlinearity": "sigmoid"})
    with pytest.raises(UserError) as info:
        config_lib.resolve(config)
    assert str(info.value) == (
        "model.elman.nonlinearity must be one of ('tanh', 'relu'), got 'sigmoid'."
    )


def test_options_of_another_cell_are_not_checked():
    """A GRU run does not care what the Mogrifier's block says."""
    config_lib.resolve(tiny_config(**{"model.mogrifier_gru.rounds": -1}))


def test_a_config_saved_before_the_move_keeps_its_mogrifier_options():
    saved = config_lib.base_config().to_dict()
    del saved["model"]["mogrifier_gru"]
    saved["model"].update(cell="mogrifier_gru", mogrifier_rounds=3, mogrifier_rank=64)
    config = config_lib.complete(saved)
    assert (config.model.mogrifier_gru.rounds, config.model.mogrifier_gru.rank) == (3, 64)
    assert "mogrifier_rounds" not in config.model


def _other_valid_value(cell, field):
    """A value of the field's type other than its default that the options accept."""
    if isinstance(field.default, bool):
        candidates = [not field.default]
    elif isinstance(field.default, int):
        candidates = [field.default + 1, field.default + 2]
    elif isinstance(field.default, float):
        candidates = [field.default / 2 + 0.1]
    else:
        candidates = ["relu", "identity", "tanh", "orthogonal"]
    for value in candidates:
        if value == field.default:
            continue
        try:
            registry.make_options(cell, {field.name: value})
        except ValueError:
            continue
        return value
    pytest.fail(f"no other valid value found for {cell}.{field.name}")
