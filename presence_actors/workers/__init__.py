"""``server.workers = N``: one supervising process and N worker processes that serve
one port together, each a node of the cluster (:mod:`.supervisor`, :mod:`.worker`)."""

from .supervisor import Supervisor
from .worker import check_workers, serve_worker, worker_settings

__all__ = ["Supervisor", "check_workers", "serve_worker", "worker_settings"]
