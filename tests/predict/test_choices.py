"""The predictors' choice lists are the engine's tables, in a form cog's static parser reads.

cog build parses predict.py with tree-sitter and resolves ``choices=`` from literals or from names bound to
literals at the top of the same file (pkg/schema/python/module_scope.go in replicate/cog): a name imported from
sdxl/ would fail the build. So each list is a literal there, and these tests keep it equal to its table.
"""

import ast
from pathlib import Path

import pytest

import predict
import predict_turbo
from sdxl.generate import REFINE_MODES
from sdxl.images import OUTPUT_FORMATS
from sdxl.model_specs import FEWSTEP_MODELS, MODEL_SPECS
from sdxl.schedulers import SCHEDULERS

REPO = Path(__file__).resolve().parents[2]


def test_predict_choices_are_the_engine_tables():
    assert predict.SCHEDULER_NAMES == list(SCHEDULERS)
    assert predict.REFINE_NAMES == REFINE_MODES
    assert predict.OUTPUT_FORMAT_NAMES == list(OUTPUT_FORMATS)


def test_predict_turbo_choices_are_the_engine_tables():
    assert predict_turbo.MODEL_NAMES == FEWSTEP_MODELS
    assert all(MODEL_SPECS[name].scheduler in SCHEDULERS for name in FEWSTEP_MODELS)
    assert predict_turbo.OUTPUT_FORMAT_NAMES == list(OUTPUT_FORMATS)


@pytest.mark.parametrize("path", ["predict.py", "predict_turbo.py"])
def test_every_choices_argument_is_a_literal_cogs_static_parser_reads(path):
    tree = ast.parse((REPO / path).read_text())
    literals = {
        node.targets[0].id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
    }
    found = 0
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Input":
            for keyword in call.keywords:
                if keyword.arg == "choices":
                    value = keyword.value
                    if isinstance(value, ast.Name):
                        value = literals.get(value.id)
                    assert isinstance(value, ast.List), ast.dump(keyword.value)
                    assert all(isinstance(e, ast.Constant) for e in value.elts)
                    found += 1
                if keyword.arg in ("ge", "le"):  # numbers only: a name is silently dropped from the schema
                    assert isinstance(keyword.value, ast.Constant), ast.dump(keyword.value)
    assert found >= 2
