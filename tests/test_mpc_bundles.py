"""Share bundles: sealed to one node, bound to their datasource, checked against the
ledger's commitment before anything is opened."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from mpc.bundles import BundleError, ShareBundle, commitment, open_sealed, seal
from mpc.field import MERSENNE_127, PrimeField
from mpc.shamir import Scheme

SCHEME = Scheme(PrimeField(MERSENNE_127), parties=3, threshold=1)


def bundles_for(values: list[int], nodes: list[str]) -> list[ShareBundle]:
    per_node = SCHEME.share_vector(SCHEME.field.vectors.of(values))
    keys = tuple(f"p-{i}" for i in range(len(values)))
    return [ShareBundle("ds-1", node, keys, {"sbp": per_node[i]}) for i, node in enumerate(nodes)]


def test_each_node_opens_its_own_bundle_and_the_shares_reconstruct() -> None:
    nodes = ["node:a", "node:b", "node:c"]
    keys = {n: X25519PrivateKey.generate() for n in nodes}
    values = [120, 135, 142, 99]
    opened = []
    for bundle in bundles_for(values, nodes):
        sealed = seal(bundle, keys[bundle.node].public_key())
        assert b"p-0" not in sealed and b"120" not in sealed  # sealed: nobody else reads it
        opened.append(open_sealed(sealed, keys[bundle.node], expected_commitment=commitment(sealed)))
    columns = [b.ints("sbp") for b in opened]
    assert [SCHEME.reconstruct({1: a, 2: b}) for a, b, _ in zip(*columns, strict=True)] == values
    assert opened[0].keys == opened[1].keys == ("p-0", "p-1", "p-2", "p-3")


def test_a_tampered_bundle_is_refused_by_its_commitment() -> None:
    key = X25519PrivateKey.generate()
    sealed = seal(bundles_for([1, 2, 3], ["node:a", "node:b", "node:c"])[0], key.public_key())
    recorded = commitment(sealed)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(BundleError, match="commitment"):
        open_sealed(tampered, key, expected_commitment=recorded)


def test_another_nodes_key_cannot_open_a_bundle() -> None:
    sealed = seal(
        bundles_for([1, 2, 3], ["node:a", "node:b", "node:c"])[0], X25519PrivateKey.generate().public_key()
    )
    with pytest.raises(BundleError, match="cannot be opened"):
        open_sealed(sealed, X25519PrivateKey.generate(), expected_commitment=commitment(sealed))


def test_duplicate_subjects_and_ragged_columns_are_refused() -> None:
    key = "p-1"
    with pytest.raises(BundleError, match="duplicate join keys"):
        ShareBundle("ds", "node:a", (key, key), {"x": [1, 2]})
    with pytest.raises(BundleError, match="values for"):
        ShareBundle("ds", "node:a", (key,), {"x": [1, 2]})
