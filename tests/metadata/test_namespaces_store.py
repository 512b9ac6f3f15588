"""Namespace rules of the metadata store, with containerd's messages (SQLite and PostgreSQL)."""

import pytest

from flotilla.libs.errors import AlreadyExists, InvalidArgument, NotFound
from flotilla.services.metadata.api import Namespace
from flotilla.services.metadata.store import MetadataStore


def test_create_get_list_update_delete(store: MetadataStore) -> None:
    store.create_namespace(Namespace("a", {"x": "1"}))
    store.create_namespace(Namespace("b"))
    assert store.get_namespace("a") == Namespace("a", {"x": "1"})
    assert [n.name for n in store.list_namespaces()] == ["a", "b"]
    assert store.update_namespace(Namespace("a", {"y": "2"}), ["labels.y"]).labels == {"x": "1", "y": "2"}
    assert store.update_namespace(Namespace("a", {}), ["labels.x"]).labels == {"y": "2"}
    assert store.update_namespace(Namespace("a", {"z": "3"}), []).labels == {"z": "3"}
    store.delete_namespace("a")
    assert [n.name for n in store.list_namespaces()] == ["b"]


def test_duplicate_is_already_exists(store: MetadataStore) -> None:
    store.create_namespace(Namespace("a"))
    with pytest.raises(AlreadyExists, match='namespace "a": already exists'):
        store.create_namespace(Namespace("a", {"k": "v"}))
    assert store.get_namespace("a").labels == {}


@pytest.mark.parametrize("name", ["", "bad name", "-x", "a" * 77, "../x"])
def test_bad_names_are_invalid(store: MetadataStore, name: str) -> None:
    with pytest.raises(InvalidArgument):
        store.create_namespace(Namespace(name))
    assert store.list_namespaces() == []


def test_oversized_label_is_invalid_and_changes_nothing(store: MetadataStore) -> None:
    with pytest.raises(InvalidArgument, match="namespace.Labels: label key and value greater than maximum size"):
        store.create_namespace(Namespace("a", {"k": "v" * 5000}))
    assert store.list_namespaces() == []
    store.create_namespace(Namespace("a", {"k": "v"}))
    with pytest.raises(InvalidArgument):
        store.update_namespace(Namespace("a", {"k": "v" * 5000}), ["labels.k"])
    assert store.get_namespace("a").labels == {"k": "v"}


def test_delete_unknown_is_not_found(store: MetadataStore) -> None:
    with pytest.raises(NotFound, match='namespace "nope": not found'):
        store.delete_namespace("nope")


def test_bad_update_path_is_invalid(store: MetadataStore) -> None:
    store.create_namespace(Namespace("a"))
    with pytest.raises(InvalidArgument, match='cannot update "name" field'):
        store.update_namespace(Namespace("a"), ["name"])
