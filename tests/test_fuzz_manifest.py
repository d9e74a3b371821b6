"""Fuzz the manifest and bundle loader: whatever the manifest holds, the only error is BundleError."""

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nitro_edge.bundle import Bundle
from nitro_edge.errors import BundleError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def paths_of(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from paths_of(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from paths_of(v, prefix + (i,))


@pytest.fixture(scope="module")
def valid(tiny_bundle):
    root = tiny_bundle("sd15")
    return root, json.loads((root / "manifest.json").read_text())


def open_with(root, manifest, tmp_path_factory):
    """Validate `manifest` against the real files of `root` (verify hashes too)."""
    bundle = Bundle(root, manifest)
    bundle.validate()
    bundle.verify_files()
    bundle.tokenizers()


def mutate_and_open(valid, data, tmp_path_factory):
    """Replace or delete 1 to 3 random parts of a valid manifest; opening it may only raise BundleError."""
    root, manifest = valid
    mutated = copy.deepcopy(manifest)
    paths = [p for p in paths_of(mutated) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = mutated
        try:
            for key in path[:-1]:
                parent = parent[key]
            action = data.draw(st.sampled_from(["replace", "delete"]))
            if action == "delete" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = data.draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue
    try:
        open_with(root, mutated, tmp_path_factory)
    except BundleError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_manifests_fail_only_with_bundle_error(valid, data, tmp_path_factory):
    mutate_and_open(valid, data, tmp_path_factory)


@pytest.mark.slow  # the same at length
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_many_mutated_manifests_fail_only_with_bundle_error(valid, data, tmp_path_factory):
    mutate_and_open(valid, data, tmp_path_factory)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(manifest=json_values)
def test_arbitrary_json_fails_only_with_bundle_error(valid, manifest, tmp_path_factory):
    root, _ = valid
    with pytest.raises(BundleError):
        open_with(root, manifest, tmp_path_factory)


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("pad_token_id", -1, "pad_token_id"),
        ("pad_token_id", 2**40, "pad_token_id"),
        ("max_length", 2**40, "max_length"),
    ],
)
def test_tokenizer_numbers_out_of_range_are_bundle_errors(valid, tmp_path_factory, field, value, says):
    """What the long fuzz found: numbers the tokenizers library cannot take raised OverflowError."""
    root, manifest = valid
    mutated = copy.deepcopy(manifest)
    mutated["tokenizers"][0][field] = value
    with pytest.raises(BundleError, match=says):
        open_with(root, mutated, tmp_path_factory)
