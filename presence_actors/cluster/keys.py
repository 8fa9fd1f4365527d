"""Where the cluster keeps what in Redis.

Everything about one user lives in keys hash-tagged with its id (``{alice}``),
so a Redis Cluster keeps them in one slot and one script can change them
atomically. What spans users lives under the ``{pa}`` tag (nodes, the
ordered index of every user for ``get_all_users``, the audit stream operators
read, the policy log).
"""

from __future__ import annotations

PREFIX = "pa"


def entries(user_id: str) -> str:
    """HASH: one field per node holding sessions of the user (its aggregate), plus
    ``v:<node>`` (when it last heard from the user) and ``x:<node>`` (the epoch below
    which that node's writes are refused: it was taken for dead)."""
    return f"{PREFIX}:{{{user_id}}}:n"


def merged(user_id: str) -> str:
    """HASH, field ``j``: the user as the cluster shows it (JSON), with its version."""
    return f"{PREFIX}:{{{user_id}}}:v"


def events(user_id: str) -> str:
    """STREAM: the user's presence transitions (its history), capped."""
    return f"{PREFIX}:{{{user_id}}}:e"


def channel(user_id: str) -> str:
    """The user's changes, for the nodes that watch it (``contacts`` fan-out)."""
    return f"{PREFIX}:{{{user_id}}}:c"


def policy(user_id: str) -> str:
    """HASH: the user's visibility (field ``vis``)."""
    return f"{PREFIX}:{{{user_id}}}:p"


def contacts(user_id: str) -> str:
    return f"{PREFIX}:{{{user_id}}}:k"


def blocks(user_id: str) -> str:
    return f"{PREFIX}:{{{user_id}}}:b"


# --- what spans users: one slot ({pa}) -------------------------------------------------

EVERYONE = f"{PREFIX}:{{pa}}:all"  # channel: every change (``everyone`` fan-out)
NODES = f"{PREFIX}:{{pa}}:nodes"  # HASH node -> epoch it registered with
ORDER = f"{PREFIX}:{{pa}}:order"  # ZSET: every known user in get_all_users order
VIEWS = f"{PREFIX}:{{pa}}:views"  # HASH user -> its merged JSON, for reads
AUDIT = f"{PREFIX}:{{pa}}:audit"  # STREAM: recent transitions of all users (operators)
POLICY_LOG = f"{PREFIX}:{{pa}}:policy"  # STREAM: every policy change, for the nodes to follow
POLICY_USERS = f"{PREFIX}:{{pa}}:policy-users"  # SET: users with a policy record
GENERATION = f"{PREFIX}:{{pa}}:generation"  # a Redis that lost its data has none


def alive(node: str) -> str:
    """STRING with a TTL: the node is alive while it exists."""
    return f"{PREFIX}:{{pa}}:alive:{node}"


def node_users(node: str, epoch: int) -> str:
    """SET: the users the node, in that epoch, holds an entry for (what to clean up
    when it dies)."""
    return f"{PREFIX}:{{pa}}:users:{node}:{epoch}"


def reaping(node: str) -> str:
    """STRING with a TTL: a live node is cleaning up after the dead ``node``."""
    return f"{PREFIX}:{{pa}}:reap:{node}"
