import pytest

import cascademl


def test_all_names_exist_and_are_sorted():
    for name in cascademl.__all__:
        assert hasattr(cascademl, name), name
    assert list(cascademl.__all__) == sorted(cascademl.__all__)


def test_no_private_names_exported():
    assert not [n for n in cascademl.__all__ if n.startswith("_") and n != "__version__"]


def test_public_names_in_init_are_all_listed():
    public = {
        n
        for n, v in vars(cascademl).items()
        if not n.startswith("_") and not isinstance(v, type(cascademl))
    }
    assert public <= set(cascademl.__all__)


def test_exception_hierarchy_matches_builtins():
    assert issubclass(cascademl.NotFittedError, ValueError)
    assert issubclass(cascademl.NotFittedError, AttributeError)
    assert issubclass(cascademl.StageInterfaceError, TypeError)
    assert issubclass(cascademl.StageOutputError, ValueError)
    assert issubclass(cascademl.ClassMismatchError, cascademl.StageError)
    assert issubclass(cascademl.PolicyError, ValueError)
    assert issubclass(cascademl.DeviceUnavailableError, RuntimeError)
    assert issubclass(cascademl.DeviceWarning, cascademl.CascadeMLWarning)
    for name in cascademl.__all__:
        obj = getattr(cascademl, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj.__name__.endswith("Error"):
            assert issubclass(obj, cascademl.CascadeMLError), name


def test_torch_names_load_lazily():
    assert cascademl.TorchStage.__name__ == "TorchStage"
    assert cascademl.CostReport.__module__ == "cascademl.cost"
    with pytest.raises(AttributeError, match="NoSuchThing"):
        cascademl.NoSuchThing  # noqa: B018
