"""Connected components of the duplicate edges, partitioned by node bucket: min-label propagation.

Each node (a gid) lives in the bucket `mix64(gid) % B`. A bucket holds its nodes' adjacency rows
(both directions of every edge) and their labels. Rounds are synchronous:

    adj = adjacency(edges, B)[b]               # once, from every partition's edges
    nodes, labels, changed = start(adj)        # round 0: the smallest of itself and its neighbours
    out = outbox(adj, nodes, labels, changed, B)   # (neighbour, label) to the neighbour's bucket
    labels, changed = absorb(nodes, labels, inbox)  # next round: the smallest label heard
    ... until no label changes anywhere; then decisions(adj, nodes, labels)

A node's final label is the smallest gid of its component (the one kept): the same result as
dupgraph.resolve at any bucket count and any world size, with one bucket in memory at a time.
Rounds = the largest component's diameter + 1 at most (chains of copies of copies are short); a
star, the common shape (copies of one original), is final after round 0, sending nothing.
"""

from __future__ import annotations

import numpy as np

from jobs.filters import dupgraph as dg

_EMPTY = np.empty((0, 3), np.uint64)


def bucket_of(gids: np.ndarray, buckets: int) -> np.ndarray:
    """The bucket of each gid (spread by a 64-bit mix, so a shard's gids land everywhere)."""
    return (dg.mix64(gids) % np.uint64(buckets)).astype(np.int64)


def split(rows: np.ndarray, by: np.ndarray, buckets: int) -> dict[int, np.ndarray]:
    """rows grouped by the bucket of their `by` value; empty buckets left out."""
    if not len(rows):
        return {}
    which = bucket_of(by, buckets)
    order = np.argsort(which, kind="stable")
    rows, which = rows[order], which[order]
    cuts = np.flatnonzero(np.diff(which)) + 1
    return {int(part[0]): chunk for part, chunk in zip(np.split(which, cuts), np.split(rows, cuts),
                                                        strict=True)}


def adjacency(edges: np.ndarray, buckets: int) -> dict[int, np.ndarray]:
    """(u, v, kind) rows in both directions of each (a, b, kind) edge, by the bucket of u."""
    if not len(edges):
        return {}
    both = np.concatenate([edges, edges[:, [1, 0, 2]]]).astype(np.uint64)
    return split(both, both[:, 0], buckets)


def start(adj: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bucket's nodes (sorted), each labelled with the smallest of itself and its neighbours
    (the first round needs no messages: both directions of every edge are here), and which
    labels that lowered (only those have anything to tell their neighbours)."""
    if not len(adj):
        empty = np.empty(0, np.uint64)
        return empty, empty.copy(), np.empty(0, bool)
    nodes, at = np.unique(adj[:, 0], return_inverse=True)
    labels = nodes.copy()
    np.minimum.at(labels, at.ravel(), adj[:, 1])
    return nodes, labels, labels < nodes


def outbox(adj: np.ndarray, nodes: np.ndarray, labels: np.ndarray, changed: np.ndarray,
           buckets: int) -> dict[int, np.ndarray]:
    """(v, label) pairs to send, by the bucket of v: each changed node's label to its neighbours,
    reduced to the smallest label per v (only changed nodes can tell anyone something new)."""
    if not len(adj) or not changed.any():
        return {}
    at = np.searchsorted(nodes, adj[:, 0])
    live = changed[at]
    v, lab = adj[live, 1], labels[at[live]]
    keep = lab < v  # a label no smaller than v's own gid can never lower v's label
    v, lab = v[keep], lab[keep]
    if not len(v):
        return {}
    order = np.lexsort((lab, v))
    v, lab = v[order], lab[order]
    first = np.concatenate(([True], v[1:] != v[:-1]))
    msgs = np.stack([v[first], lab[first]], axis=1)
    return split(msgs, msgs[:, 0], buckets)


def absorb(nodes: np.ndarray, labels: np.ndarray, inbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bucket's labels after this round's (v, label) messages, and which of them went down."""
    new = labels.copy()
    if len(inbox):
        at = np.searchsorted(nodes, inbox[:, 0])
        if (at >= len(nodes)).any() or (nodes[np.minimum(at, len(nodes) - 1)] != inbox[:, 0]).any():
            raise ValueError("a label message for a node this bucket does not hold")
        np.minimum.at(new, at, inbox[:, 1])
    return new, new < labels


def decisions(adj: np.ndarray, nodes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dropped gids sorted, reasons) of a bucket whose labels are final.

    A node whose label (its component's smallest gid) is not itself is dropped: an exact
    duplicate when it has an exact edge to that very gid (exact edges join each member of a
    content group to the group's smallest gid, and a component's smallest gid heads its group),
    else a near duplicate; as dupgraph.resolve decides.
    """
    gone = labels != nodes
    dropped, root = nodes[gone], labels[gone]
    reasons = np.full(len(dropped), dg.NEAR, np.uint8)
    exact = adj[adj[:, 2] == dg.EXACT]
    if len(exact) and len(dropped):
        pairs = np.ascontiguousarray(exact[:, :2]).view([("u", np.uint64), ("v", np.uint64)]).ravel()
        mine = np.ascontiguousarray(np.stack([dropped, root], axis=1)).view(pairs.dtype).ravel()
        reasons[np.isin(mine, pairs)] = dg.EXACT
    return dropped, reasons


def components(edges: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray, int]:
    """All rounds in one process (tests, the pure reference): (dropped, reasons, rounds)."""
    adj = adjacency(edges, buckets)
    state, changed = {}, {}
    for b, a in adj.items():
        nodes, labels, changed[b] = start(a)
        state[b] = (nodes, labels)
    rounds = 1
    while True:
        mail: dict[int, list[np.ndarray]] = {}
        for b, (nodes, labels) in state.items():
            for dest, msgs in outbox(adj[b], nodes, labels, changed[b], buckets).items():
                mail.setdefault(dest, []).append(msgs)
        if not mail:
            break
        rounds += 1
        for b, (nodes, labels) in state.items():
            inbox = np.concatenate(mail.get(b, [_EMPTY[:, :2]]))
            labels, changed[b] = absorb(nodes, labels, inbox)
            state[b] = (nodes, labels)
    got = [decisions(adj[b], *state[b]) for b in sorted(state)]
    dropped = np.concatenate([np.empty(0, np.uint64), *(d for d, _ in got)])
    reasons = np.concatenate([np.empty(0, np.uint8), *(r for _, r in got)])
    order = np.argsort(dropped)
    return dropped[order], reasons[order], rounds
