"""The command line's parts that are not the dispatch itself (that is ``__main__``):
one-line errors, option checking, start-up checks, and the commands that ask a
running server (``status``, ``watch``)."""
