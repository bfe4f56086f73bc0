"""People steer the watcher: holds, pins, rollbacks, and the status they see.

- :mod:`~watcher.steer.trailers`: the machine-readable lines every commit of the
  watcher and of the people's commands ends with (what it set, on which block);
- :mod:`~watcher.steer.holds`: from those lines and what a branch holds now, each
  block's state (following, pinned, held, off) and what the watcher may write;
- :mod:`~watcher.steer.selectors`: ``BLOCK`` as people write it, to one block;
- :mod:`~watcher.steer.status`: the status of every block, for ``watcher status``,
  ``/status.json`` and the page.

All pure: history in, state out. Reading git is :mod:`watcher.gitops.history`'s job.
"""
