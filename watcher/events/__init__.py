"""Registry events: pushes announced on Google's Pub/Sub topic ``gcr``, turned into checks.

- :mod:`~watcher.events.messages`: a message's data -> a hint (pure);
- :mod:`~watcher.events.coverage`: which images events cover, polled at the backstop (pure);
- :mod:`~watcher.events.subscriber`: streaming pull from each subscription (google-cloud-pubsub);
- :mod:`~watcher.events.routing`: a hint to the replica owning the image's shard, acked
  once the check is decided and its updates have landed.

A message is a hint, never a fact: it only says "look at this image now".
See docs/architecture.md, "events/: registry events".
"""
