"""DFS: a distributed file system on Twisted."""

__version__ = "0.1.0"
