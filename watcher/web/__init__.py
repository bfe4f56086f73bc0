"""What the daemon serves to people: the status page (:mod:`watcher.web.page`)."""
