"""presence_actors: a real-time "who is online" server built as a Trio actor system."""

__version__ = "0.1.0"
