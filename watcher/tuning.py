"""Every tuning constant of the daemon, in one place, each with the reason for its value.

These are not configuration: each follows from a guarantee (the SIGTERM
deadline, the budget's cap, the lease protocol) rather than from a site's
taste. Change one only together with the guarantee it serves.
"""

from __future__ import annotations

# --- the engine ---------------------------------------------------------------------------

# Look-ups in flight at once per process: enough to hide latency, few enough
# that the budget, not the socket count, decides the pace.
CONCURRENCY = 16
# SIGTERM must end the process within 10 s; a push in flight gets this long.
# Then it is killed (up to 1 s to reap it) and the process still has to close
# Redis, the HTTP server and the interpreter: 8 s left too little of the 10.
STOP_GRACE = 6.0
# After the grace, the push is killed; this long is allowed for its thread to
# see the kill and end.
ABORT_REAP = 1.0
# Share of the interval over which a taken-over shard's first sweep runs.
TAKEOVER_SPAN = 0.25
# Updates for one branch arriving within this long (at most interval/20) go
# into one commit.
BATCH_DELAY = 2.0
# A supervised task that fails unexpectedly is restarted after this long
# (doubling per failure in a row, up to the maximum), so a bug that fails at
# once does not spin a core.
RESTART_FIRST = 1.0
RESTART_MAX = 60.0

# --- the request budget -------------------------------------------------------------------

# Time between a grant and the request leaving the socket. Counting a grant
# this much longer than the window keeps a late send inside the cap.
SEND_MARGIN = 0.05
# Histogram resolution of the shared budget's replies: a fallback counts the
# old shared grants as leaving the window at most W / BUCKETS late, which
# costs that much throughput once, right after a switch.
BUDGET_BUCKETS = 10
# Back-off after a 429 without Retry-After: doubles per consecutive 429, capped.
THROTTLE_FIRST = 5.0
THROTTLE_MAX = 300.0

# --- registries ---------------------------------------------------------------------------

# Registries send blobs to storage through a short chain of redirects.
MAX_REDIRECTS = 5
# A token endpoint that does not say how long its token lives is assumed to
# grant the minimum the distribution spec allows.
DEFAULT_TOKEN_LIFETIME = 60.0
# Refresh a Google access token this long before it expires: a token that
# dies in flight costs a 401 and a retry, both drawn from the budget. At most
# a quarter of the token's life, though: a metadata server hands out its
# cached token with whatever life it has left (possibly under 5 minutes), and
# a fixed margin longer than that would refresh on every use.
REFRESH_MARGIN = 300.0
REFRESH_SHARE = 0.25
# After ADC fails (no metadata server, a bad key file), answer with the same
# failure this long instead of asking again: every image of a registry asks
# for a token, and each ADC attempt may wait seconds on a metadata ping.
FAILURE_TTL = 15.0
# Share of the interval a tag's digest (or a listing) is trusted for in the
# replicas' shared cache: long enough that a take-over asks once, short
# enough that the owner's next sweep asks afresh.
FRESH_SHARE = 0.5

# --- shard leases -------------------------------------------------------------------------

# Leases live this many intervals; renewal happens every half interval, so a
# live lease always has at least one interval left when others look at it.
TTL_INTERVALS = 1.5
RENEW_INTERVALS = 0.5
# Woken just after a foreign lease's expiry, not on it: Redis deletes a key
# only once its expiry is strictly past.
EXPIRY_SLACK = 0.02

# How long the start-up check of Redis (watcher run, watcher once) waits for
# answers: a Redis that takes longer is treated as down for now (the daemon
# then starts on its fallbacks), not as misconfigured.
STARTUP_CHECK = 10.0

# --- git ----------------------------------------------------------------------------------

# How long a fetch or push may take before it is killed (``git.timeout``'s default).
GIT_TIMEOUT = 60.0
# How long the signing check at start may take (one signature, by ssh-keygen or gpg,
# which may have to start its agent): long enough for a loaded host, short enough
# that a program stuck on something is reported instead of holding the start.
SIGNING_CHECK_TIMEOUT = 20.0
# Threads for the branches' writes. A write mostly waits (for git, the clone
# lock, a push in flight to join): with the default executor's cores + 4
# threads, the writes of the eleventh branch waited for ten others to finish.
WRITER_THREADS = 32

# How far back in a values file's history the status looks for the commit that
# gave a held or pinned block its value, when no trailer names it (a revert, a hand
# edit). One bounded `git log` per such block per change of its file; a change older
# than this many commits of the file shows as unknown (`watcher history` walks all).
LAST_CHANGE_DEPTH = 200

# --- logs ---------------------------------------------------------------------------------

# A condition that lasts (Redis out of reach, a degraded budget, a cache that
# fails) is logged at most this often, so an outage does not flood the logs.
PROBLEM_LOG_EVERY = 60.0


# --- registry events ----------------------------------------------------------------------

# Hints for one image arriving within this long of the first share one check:
# Pub/Sub delivers a push's messages (digest, then each tag) in one burst.
EVENT_GATHER = 0.1
# An event's update waits at most this long for others to share its commit (the
# interval's batch delay, up to 2 s, would be most of an event's latency): pushes
# announced together still land together, one commit per branch.
EVENT_BATCH_DELAY = 0.2
# A shared-cache entry written less than this long after an event's publish time is
# not trusted for it: its request may have left before the push was visible.
EVENT_CACHE_MARGIN = 1.0
# How often a replica reads the hints handed to its shards and the answers to its own
# (one Redis script per tick): the hand-off adds half of this on average.
EVENT_POLL = 0.05
# A hint handed to another replica and not answered within this long is nacked, so
# Pub/Sub redelivers it to whichever replica, routed to the shard's owner then (the
# owner died, or Redis lost the hint). Longer than a check and a write take.
EVENT_HANDOFF_TIMEOUT = 60.0
# A hint whose check failed (a 429, the registry down) is nacked after this long, so
# its redelivery does not spin while the registry is unwell.
EVENT_RETRY_DELAY = 10.0
# Messages a subscriber holds at once (Pub/Sub flow control): more wait on the server.
EVENT_FLOW_MESSAGES = 1000
# Each lease extension of a message in hand is at most this long (seconds, 10-600):
# the longest a dead replica's messages wait before Pub/Sub redelivers them. The
# client's default (60 s) would hold a push back a minute; shorter costs more
# extension requests (one per message every ~0.9 of it, for messages held that long).
EVENT_LEASE_EXTENSION = 15
# A subscription's stream that failed is opened again after this long, doubling per
# failure in a row, up to the maximum.
EVENT_RECONNECT_FIRST = 1.0
EVENT_RECONNECT_MAX = 60.0
# A hand-off list entry lives this long at most: the message is redelivered long before.
EVENT_KEY_TTL = 600.0

# --- the clone ----------------------------------------------------------------------------

# Small packs (each write adds one) merged by a geometric repack after a fetch once
# there are this many: few enough that object look-ups stay quick, many enough that
# the repack runs every few dozen writes, each time merging only the small packs.
REPACK_PACKS = 24
