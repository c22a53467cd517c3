"""The names of the counters ``stats.Stats`` keeps: every counter is incremented by one of these.

http/metrics.py exports each (tests/test_operations.py checks that none is left out). A name
ending in ``_`` is a prefix: the rest of a counter's name is the value of the metric's label (of its
labels, separated by ``:``).
"""

MESSAGES_PUBLISHED = "messages_published"
PUBLISH_RUNS = "publish_runs"
DELIVERIES = "deliveries"
SLOW_CONSUMER_DISCONNECTS = "slow_consumer_disconnects"
CONNECTIONS_REPLACED = "connections_replaced"
MESSAGES_LOST = "messages_lost"
LAYER_GAPS = "layer_gaps"
LAYER_RECOVERED = "layer_recovered"
HUB_DUPLICATES = "hub_duplicates"
HUB_ERRORS = "hub_errors"
HUB_UNKNOWN_EVENTS = "hub_unknown_events"
REGISTRY_CHANGES_HEARD = "registry_changes_heard"
PUBLISH_ERRORS = "publish_errors"
PUBLISH_OUTCOMES_UNKNOWN = "publish_outcomes_unknown"
PUBLISH_OUTCOMES_RECORDED = "publish_outcomes_recorded"
PUBLISH_OUTCOMES_NOT_RECORDED = "publish_outcomes_not_recorded"
FANOUT_REPAIRED = "fanout_repaired"
FANOUT_REPAIRS_ABANDONED = "fanout_repairs_abandoned"
REDIS_ERRORS = "redis_errors"
RESUME_GAPS = "resume_gaps"
HOOK_EVENTS_SENT = "hook_events_sent"

# Prefixes: the label value follows.
REFUSALS = "refusals_"  # + the refusal's error code
FRAMES_REFUSED = "frames_refused_"  # + binary, too_large, read_only, rate_limited, not_json, bad_control or publish
CONNECTIONS_OPENED = "connections_opened_"  # + ws or sse (each channel), or multiplexed (a /api/v1/connect socket)
HOOK_REJECTIONS = "hook_rejections_"  # + on_connect or on_publish
HOOK_FAILURES = "hook_failures_"  # + the hook's kind (or connect_url, publish_url, events_url), ":", the reason
HOOK_EVENTS_DROPPED = "hook_events_dropped_"  # + overflow or undelivered
