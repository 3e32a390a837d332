"""The docs' generated tables (launch/doc_tables.py) match the code they are read from."""

from charrnn_jax import config_lib
from charrnn_jax.models import registry
from launch import doc_tables


def test_the_generated_tables_are_current():
    assert doc_tables.main(["--check"]) == 0, "run: python -m launch.doc_tables"


def test_the_key_table_lists_every_key_once_with_its_default_and_a_comment():
    schema = config_lib.schema()
    keys = [key for key, _, _ in schema]
    assert sorted(keys) == sorted(config_lib.flatten(config_lib.base_config()))
    assert len(keys) == len(set(keys))
    declared = config_lib.flatten(config_lib.base_config())
    for key, default, doc in schema:
        assert default == declared[key], key
        assert doc.strip() and not doc.endswith("only: "), f"{key} has no comment"


def test_the_cell_table_has_a_row_per_registered_cell():
    rows = doc_tables.cell_table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == list(registry.CELLS)
