"""image-tag-watcher: keeps GitOps environment branches on the images teams push."""

__version__ = "0.1.0"
